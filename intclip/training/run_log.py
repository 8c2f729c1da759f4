"""`train.log`: everything a training run prints, kept in its run directory.

stdout and stderr are teed while the run lasts, so the log holds what the terminal showed:
messages, warnings, errors and the final summary. Lines printed before the run directory exists
are held back and written first once it does; a run that fails to start writes no log at all.
A resumed run appends. Every line starts with the local time it was printed at
(`2026-01-02 03:04:05 `). A terminal's live progress bar bypasses the log (see `progress`).
"""

from __future__ import annotations

import errno
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from pipeline.common.errors import UserError

LOG_FILE = "train.log"
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
_TERMINAL_CODES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class RunLog:
    """The log file of one run, and the terminal's own stderr."""

    def __init__(self, terminal: IO[str]) -> None:
        self.terminal = terminal
        self._held: list[str] = []
        self._file: IO[str] | None = None
        self._line_start = True

    def attach(self, run_dir: Path) -> None:
        """Start writing to `run_dir`/train.log, held-back lines first."""
        if self._file is None:
            path = run_dir / LOG_FILE
            if not os.access(run_dir, os.W_OK | os.X_OK):  # every file of the run is rewritten
                raise UserError(f"{run_dir}: cannot write ({os.strerror(errno.EACCES)})")
            try:
                self._file = path.open("a", encoding="utf-8", buffering=1)
            except OSError as err:  # a read-only run directory, resumed: nothing written yet
                raise UserError(f"{path}: cannot write ({err.strerror})") from None
            self._file.write("".join(self._held))  # held lines carry their own time already
            self._held.clear()

    def write(self, text: str) -> None:
        """Add `text` to the log only (colours and cursor codes left out)."""
        text = self._stamped(_TERMINAL_CODES.sub("", text))
        if self._file is None:
            self._held.append(text)
        elif text:
            self._file.write(text)

    def _stamped(self, text: str) -> str:
        """`text` with the time before each line it starts (a write may end mid-line)."""
        stamp = datetime.now().strftime(TIME_FORMAT) + " "
        pieces = []
        for piece in text.splitlines(keepends=True):
            pieces.append(stamp + piece if self._line_start else piece)
            self._line_start = piece.endswith("\n")
        return "".join(pieces)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class _Tee:
    """A text stream that also writes to the run log; everything else is the stream's own."""

    def __init__(self, stream: IO[str], log: RunLog) -> None:
        self._stream, self._log = stream, log

    def write(self, text: str) -> int:
        self._log.write(text)
        return self._stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextmanager
def captured_output() -> Iterator[RunLog]:
    """Tee stdout and stderr into a `RunLog` until the block ends; an error or an interrupt
    that ends it is logged too, as the console shows it."""
    log = RunLog(sys.stderr)
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Tee(saved[0], log), _Tee(saved[1], log)
    try:
        yield log
    except UserError as err:
        log.write("".join(f"error: {line}\n" for line in str(err).splitlines()))
        raise
    except KeyboardInterrupt:
        log.write("interrupted\n")
        raise
    finally:
        sys.stdout, sys.stderr = saved
        log.close()
