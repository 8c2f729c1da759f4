"""Training progress: a live bar on a terminal, periodic plain lines anywhere else.

A log file or a CI console gets `epoch 3/60 step 120/400 42.1 img/s loss 0.1234` every
`PLAIN_LINE_EVERY_S` seconds and at the end of each epoch, never carriage returns or blank
lines. On a terminal the bar is drawn on the terminal itself and the same lines go to the run
log only. Each line reads the loss from the device, so lines are rare by design.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

from intclip.training.run_log import RunLog
from pipeline.common.console import stderr

PLAIN_LINE_EVERY_S = 30.0


class EpochProgress:
    """One epoch's progress, updated after every optimiser step."""

    def __init__(self, epoch: int, epochs: int, steps: int, log: RunLog, shown: bool) -> None:
        """`shown`: this process reports (rank 0); the others stay silent."""
        self.epoch, self.epochs, self.steps, self.shown = epoch, epochs, steps, shown
        self.started = self.last_line = time.perf_counter()
        live = shown and stderr.is_terminal
        self.bar = (
            Progress(
                f"epoch {epoch + 1}",
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(file=log.terminal),
                transient=True,
            )
            if live
            else None
        )
        self.say: Callable[[str], None] = (
            (lambda line: log.write(line + "\n"))
            if live
            else (lambda line: stderr.print(line, markup=False))
        )

    def __enter__(self) -> EpochProgress:
        if self.bar is not None:
            self.bar.start()
            self.task = self.bar.add_task("train", total=self.steps)
        return self

    def __exit__(self, *_: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def update(self, done: int, images: int, loss_sum: torch.Tensor, micro_batches: int) -> None:
        """`done` steps of this epoch, `images` seen by all processes, the sum of the losses of
        its `micro_batches` so far."""
        if not self.shown:
            return
        if self.bar is not None:
            self.bar.update(self.task, completed=done)
        now = time.perf_counter()
        if done < self.steps and now - self.last_line < PLAIN_LINE_EVERY_S:
            return
        self.last_line = now
        images_per_s = images / max(now - self.started, 1e-9)
        self.say(
            f"epoch {self.epoch + 1}/{self.epochs} step {done}/{self.steps} "
            f"{images_per_s:.1f} img/s loss {loss_sum.item() / max(micro_batches, 1):.4f}"
        )
