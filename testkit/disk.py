"""What a command left on disk, and the shape of a refusal: for tests that bad input changes
nothing, inside the folder it was given or beside it."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from testkit.cli import CliResult


def snapshot(folder: Path) -> dict[str, bytes | str]:
    """Every path under `folder`, relative: a file's bytes, else the kind of thing it is (a
    FIFO is never opened, which would wait for a writer)."""
    found: dict[str, bytes | str] = {}
    for path in sorted(Path(folder).rglob("*")):
        mode = path.lstat().st_mode
        key = str(path.relative_to(folder))
        if stat.S_ISREG(mode):
            found[key] = path.read_bytes()
        else:
            found[key] = "directory" if stat.S_ISDIR(mode) else f"mode {stat.S_IFMT(mode):o}"
    return found


def assert_refused(result: CliResult, code: int, line: str) -> None:
    """Exit `code`, nothing on stdout, and `line` as the only line on stderr."""
    exit_code, out, err = result
    assert exit_code == code, err
    assert out == "", out
    assert err == f"{line}\n", err


class FifoWatch:
    """Whether a reader opened the FIFO: a reader would otherwise wait forever for a writer,
    so the watch opens it for writing at once (then closes it: the reader sees an empty
    file) and remembers that it had to."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.opened = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._unblock, daemon=True)

    def _unblock(self) -> None:
        while not self._stop.wait(0.02):
            try:
                descriptor = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # no reader is waiting (ENXIO), or the FIFO is gone
                continue
            self.opened = True
            os.close(descriptor)


@contextmanager
def fifo(path: Path) -> Iterator[FifoWatch]:
    """A FIFO at `path` for the block; `.opened` says whether anything tried to read it."""
    os.mkfifo(path)
    watch = FifoWatch(path)
    watch._thread.start()
    try:
        yield watch
    finally:
        watch._stop.set()
        watch._thread.join()
