"""Progress: a live bar on a terminal, periodic plain lines anywhere else.

On a terminal, training shows `epoch 3/60`, the bar, steps, the smoothed loss, the learning rate,
images/s and the epoch's time left; validation, `eval` and `predict` show a bar of their
batches. The bars are drawn on the terminal itself, never into the run log. A log file or a CI
console gets `epoch 3/60 step 120/400 42.1 img/s loss 0.1234` every `PLAIN_LINE_EVERY_S` seconds
and at the end of each epoch, never carriage returns or blank lines, and no bar at all. Reading
the loss waits for the device, so the bar reads it at most every `BAR_READ_EVERY_S`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, TypeVar

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from intclip.training.run_log import RunLog
from pipeline.common.console import stderr

PLAIN_LINE_EVERY_S = 30.0
BAR_READ_EVERY_S = 1.0
SMOOTHING = 0.98
"""Weight of the past in the bar's loss: an exponential moving average over micro-batches."""
T = TypeVar("T")


def training_bar(terminal: IO[str]) -> Progress:
    """The columns of a training epoch's bar; its task carries `loss`, `lr` and `speed`."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("lr {task.fields[lr]}"),
        TextColumn("{task.fields[speed]} img/s"),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=Console(file=terminal, force_terminal=True),
        transient=True,
    )


class EpochProgress:
    """One epoch's progress, updated after every optimiser step."""

    def __init__(self, epoch: int, epochs: int, steps: int, log: RunLog, shown: bool) -> None:
        """`shown`: this process reports (rank 0); the others stay silent."""
        self.epoch, self.epochs, self.steps, self.shown = epoch, epochs, steps, shown
        self.started = self.last_line = self.last_read = time.perf_counter()
        live = shown and stderr.is_terminal
        self.bar = training_bar(log.terminal) if live else None
        self.average: torch.Tensor | None = None  # the smoothed loss, on the device
        self.weight = 0.0  # of the average's terms, to correct its start from zero
        self.say: Callable[[str], None] = (
            (lambda line: log.write(line + "\n"))
            if live
            else (lambda line: stderr.print(line, markup=False))
        )

    def __enter__(self) -> EpochProgress:
        if self.bar is not None:
            self.bar.start()
            self.task = self.bar.add_task(
                f"epoch {self.epoch + 1}/{self.epochs}", total=self.steps, loss="-", lr="-",
                speed="-",
            )  # fmt: skip
        return self

    def __exit__(self, *_: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def smooth(self, loss: torch.Tensor) -> None:
        """Fold a micro-batch's loss into the bar's moving average (on the device: no wait)."""
        if self.bar is None:
            return
        self.average = loss * (1 - SMOOTHING) if self.average is None else (
            self.average * SMOOTHING + loss * (1 - SMOOTHING)
        )  # fmt: skip
        self.weight = self.weight * SMOOTHING + (1 - SMOOTHING)

    def update(
        self,
        done: int,
        images: int,
        loss_sum: torch.Tensor,
        micro_batches: int,
        learning_rates: dict[str, float],
    ) -> None:
        """`done` steps of this epoch, `images` seen by all processes, the sum of the losses of
        its `micro_batches` so far, and the learning rate of each parameter group."""
        if not self.shown:
            return
        now = time.perf_counter()
        images_per_s = images / max(now - self.started, 1e-9)
        if self.bar is not None:
            fields = {}
            if self.average is not None and (
                now - self.last_read >= BAR_READ_EVERY_S or done == self.steps
            ):
                self.last_read = now
                lr = next(iter(learning_rates.values()), 0.0)
                fields = {
                    "loss": f"{self.average.item() / self.weight:.4f}",
                    "lr": f"{lr:.2e}",
                    "speed": f"{images_per_s:.1f}",
                }
            self.bar.update(self.task, completed=done, **fields)
        if done < self.steps and now - self.last_line < PLAIN_LINE_EVERY_S:
            return
        self.last_line = now
        self.say(
            f"epoch {self.epoch + 1}/{self.epochs} step {done}/{self.steps} "
            f"{images_per_s:.1f} img/s loss {loss_sum.item() / max(micro_batches, 1):.4f}"
        )


def batch_bar(batches: Iterable[T], total: int, description: str, shown: bool) -> Iterator[T]:
    """`batches` as they come, with a transient bar of them on the terminal (when `shown` and
    stderr is one), drawn on the process's own stderr, never into a run log; anywhere else
    they pass through untouched and nothing is printed."""
    if not (shown and stderr.is_terminal):
        yield from batches
        return
    bar = Progress(
        TextColumn(description),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=Console(file=sys.__stderr__, force_terminal=True),
        transient=True,
    )
    with bar:
        task = bar.add_task(description, total=total)
        for batch in batches:
            yield batch
            bar.advance(task)
