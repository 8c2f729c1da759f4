"""A stand-in for `python -m llama_cpp.server`, started the same way, for lifecycle tests.

Takes llama.cpp's `--model --host --port --model_alias --n_ctx` and behaves as
`FAKE_LLAMA_MODE` says: `ok` serves like a healthy server; `never_healthy` never listens;
`exit` dies at once with a message; `crash_after_one` answers one chat request, then dies.
It writes its pid to `FAKE_LLAMA_PID_FILE` so tests can check nothing is left behind.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

from fake_openai import FakeOpenAI, describing_responder


def main() -> None:
    parser = argparse.ArgumentParser()
    for option in ("--model", "--host", "--model_alias", "--n_ctx"):
        parser.add_argument(option)
    parser.add_argument("--port", type=int)
    args = parser.parse_args()
    if pid_file := os.environ.get("FAKE_LLAMA_PID_FILE"):
        Path(pid_file).write_text(str(os.getpid()))
    mode = os.environ.get("FAKE_LLAMA_MODE", "ok")
    print(f"fake llama server, mode {mode}, model {args.model}", flush=True)
    if mode == "exit":
        print("error: failed to load model", flush=True)
        sys.exit(3)
    if mode == "never_healthy":
        time.sleep(3600)
    answer = describing_responder()
    if mode == "crash_after_one":

        def respond_then_crash(request: dict) -> str:
            threading.Timer(0.2, os._exit, args=(1,)).start()
            return answer(request)

        answer = respond_then_crash
    with FakeOpenAI(responder=answer, port=args.port):
        time.sleep(3600)


if __name__ == "__main__":
    main()
