"""Run a console-script entry point as a user would, but offline and watched.

`python testkit/light_entry.py MODULE:FUNCTION ARGS...` refuses every network connection (a
command that must send nothing fails loudly if it tries) and, on exit, prints to stderr which
of the libraries that cost a command's start-up (torch, torchvision, open_clip, openai, numpy,
pandas) were imported: `heavy modules: [...]`.
"""

from __future__ import annotations

import atexit
import importlib
import json
import socket
import sys

HEAVY = ("torch", "torchvision", "open_clip", "openai", "numpy", "pandas")


def _refuse(*args: object, **kwargs: object) -> None:
    raise OSError("network use refused by testkit/light_entry.py")


def _report() -> None:
    imported = [name for name in HEAVY if name in sys.modules]
    print(f"heavy modules: {json.dumps(imported)}", file=sys.stderr)


def main() -> None:
    socket.socket.connect = _refuse  # type: ignore[method-assign]
    socket.socket.connect_ex = _refuse  # type: ignore[method-assign]
    socket.create_connection = _refuse  # type: ignore[assignment]
    atexit.register(_report)
    module, function = sys.argv[1].split(":")
    sys.argv = sys.argv[1:]
    getattr(importlib.import_module(module), function)()


if __name__ == "__main__":
    main()
