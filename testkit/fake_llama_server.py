"""A stand-in for `python -m pipeline.llm.llama_server`, started the same way, for lifecycle tests.

Takes llama.cpp's `--model --host --port --model_alias --n_ctx` and behaves as
`FAKE_LLAMA_MODE` says: `ok` serves like a healthy server; `never_healthy` never listens;
`exit` dies at once with a message; `crash_after_one` answers one chat request, then dies;
`hang` holds every chat request forever, touching `<pid file>.busy` when one arrives.
`FAKE_LLAMA_BAD_ANSWERS=N` makes its first N answers break the rules (no descriptions), as a
tiny model's do. `FAKE_LLAMA_REPEATS=1` answers every request of a class with the same
sentence, as a tiny model repeats itself, until a request shows it a rejected answer.
`FAKE_LLAMA_BODIES` names a file that gets each chat request's body as a JSON line. It writes
its pid to `FAKE_LLAMA_PID_FILE` so tests can check nothing is left behind, and, when
`FAKE_LLAMA_LISTEN_AFTER` names a file, waits for that file before listening, as llama.cpp
loads its model before it binds the port.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import threading
import time
from pathlib import Path

# Run as a script (as the real server module is), so the repository root that holds testkit/
# is not on the path the way pytest's `pythonpath` puts it there for the tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from testkit.fake_openai import FakeOpenAI, Responder, describing_responder

FOREVER_S = 3600


def main() -> None:
    parser = argparse.ArgumentParser()
    for option in ("--model", "--host", "--model_alias", "--n_ctx"):
        parser.add_argument(option)
    parser.add_argument("--port", type=int)
    args = parser.parse_args()
    pid_file = Path(os.environ["FAKE_LLAMA_PID_FILE"])
    pid_file.write_text(str(os.getpid()))
    mode = os.environ.get("FAKE_LLAMA_MODE", "ok")
    print(f"fake llama server, mode {mode}, model {args.model}", flush=True)
    if mode == "exit":
        print("error: failed to load model", flush=True)
        sys.exit(3)
    if mode == "never_healthy":
        time.sleep(FOREVER_S)
    answer = describing_responder()
    bad_answers = int(os.environ.get("FAKE_LLAMA_BAD_ANSWERS", "0"))
    if bad_answers:
        counter, lock, describe = itertools.count(), threading.Lock(), answer

        def break_rules_first(request: dict) -> str:
            with lock:
                seen = next(counter)
            return json.dumps({"descriptions": []}) if seen < bad_answers else describe(request)

        answer = break_rules_first
    if os.environ.get("FAKE_LLAMA_REPEATS"):
        answer = repeat_until_shown(answer)
    if mode == "crash_after_one":

        def respond_then_crash(request: dict) -> str:
            threading.Timer(0.2, os._exit, args=(1,)).start()
            return answer(request)

        answer = respond_then_crash
    if mode == "hang":

        def hold(request: dict) -> str:
            pid_file.with_suffix(".busy").touch()
            time.sleep(FOREVER_S)
            return answer(request)

        answer = hold
    if bodies := os.environ.get("FAKE_LLAMA_BODIES"):
        answer_body, record_lock = answer, threading.Lock()

        def record(request: dict) -> str:
            with record_lock, open(bodies, "a", encoding="utf-8") as log:
                log.write(json.dumps(request) + "\n")
            return answer_body(request)

        answer = record
    if listen_after := os.environ.get("FAKE_LLAMA_LISTEN_AFTER"):
        while not Path(listen_after).exists():
            time.sleep(0.02)
    with FakeOpenAI(responder=answer, port=args.port):
        time.sleep(FOREVER_S)


def repeat_until_shown(answer: Responder) -> Responder:
    """The answer to the class's first request (its first two messages) whatever else the
    request says, unless it holds a rejected answer (an assistant turn)."""

    def respond(request: dict) -> str:
        messages = request.get("messages", [])
        if any(message.get("role") == "assistant" for message in messages):
            return answer(request)
        return answer({**request, "messages": messages[:2]})

    return respond


if __name__ == "__main__":
    main()
