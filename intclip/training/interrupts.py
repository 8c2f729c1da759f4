"""Ctrl-C or SIGTERM during a run: it stops within seconds and says, in one line on stderr,
where it stopped and the exact command that continues it. `last.pt` is written at the run's
start and after every epoch, so a run stopped in any epoch, the first included, resumes."""

from __future__ import annotations

import os
import shlex
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from intclip.training.run_dir import StateNote
from intclip.training.state import TrainingProgress
from pipeline.common.errors import UserError

EXIT_INTERRUPTED = 130  # as a shell reports Ctrl-C


class RunInterrupted(UserError):
    """The run was told to stop; its message says how to continue it (empty on ranks > 0)."""

    interrupted = True

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_INTERRUPTED)


def resume_command(run_dir: Path) -> str:
    command = f"intclip-train run --resume {shlex.quote(str(run_dir))}"
    if "RANK" in os.environ:  # started by torchrun: continue it the same way
        return f"{command} (under torchrun, with the options it was started with)"
    return command


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextmanager
def stops_resumably(
    run_dir: Path,
    progress: TrainingProgress,
    epochs: int,
    steps_per_epoch: int,
    note: StateNote,
    is_main: bool,
) -> Iterator[None]:
    """SIGTERM stops the block as Ctrl-C does; either ends it as a `RunInterrupted` naming the
    epoch and step it stopped in, what `last.pt` holds, and the command that continues."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    except KeyboardInterrupt:
        step = progress.step - progress.epoch * steps_per_epoch
        message = (
            f"interrupted in epoch {progress.epoch + 1}/{epochs} at step {step}/"
            f"{steps_per_epoch}; {note.holds()}; continue with: {resume_command(run_dir)}"
        )
        raise RunInterrupted(message if is_main else "") from None
    finally:
        signal.signal(signal.SIGTERM, previous)
