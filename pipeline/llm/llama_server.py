"""`python -m pipeline.llm.llama_server`: llama.cpp's OpenAI-compatible server, prebuilt wheel.

xllamacpp ships llama.cpp's own C++ HTTP server compiled for CPU in one wheel, so the local LLM
installs in seconds where llama-cpp-python compiles for minutes. This entry point takes the
options `LocalLLMServer` passes (`--model --host --port --model_alias --n_ctx`), serves until
it is terminated, and logs to stdout like any llama.cpp server. One request is served at a
time, so the whole context belongs to it (llama.cpp would split it between parallel slots).
"""

from __future__ import annotations

import argparse
import sys
import threading

import xllamacpp


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.llm.llama_server")
    parser.add_argument("--model", required=True, help="GGUF model file")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model_alias", help="model name the server answers to")
    parser.add_argument("--n_ctx", type=int, default=4096, help="context size, tokens")
    args = parser.parse_args(argv)
    params = xllamacpp.CommonParams()
    params.model.path = args.model
    params.hostnames = [args.host]
    params.port = args.port
    params.n_ctx = args.n_ctx
    params.n_parallel = 1
    if args.model_alias:
        params.model_alias = {args.model_alias}
    try:
        server = xllamacpp.Server(params)  # loads the model, then listens on its own threads
    except RuntimeError as err:  # llama.cpp has logged why (a bad GGUF, a taken port) above
        sys.exit(f"error: {err}")
    print(f"serving {args.model} at {server.listening_address}", flush=True)
    try:
        threading.Event().wait()  # until SIGTERM ends the process
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
