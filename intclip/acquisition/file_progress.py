"""The progress bar of the passes over image files (`download`, `prepare`): counts as they
go, and on Ctrl-C where things stood and that rerunning the command continues."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from pipeline.common.console import stderr

T = TypeVar("T")


@contextmanager
def progress_bar(
    total: int, start: T, describe: Callable[[T], str], done: Callable[[T], int]
) -> Iterator[Callable[[T], None]]:
    """A bar on stderr; yields the callback that moves it with the latest counts. Says where
    things stood if stopped, and that the same command continues."""
    latest = start
    columns = (
        TextColumn("images"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[counts]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=stderr) as progress:
        task = progress.add_task("images", total=total, counts=describe(latest))

        def update(counts: T) -> None:
            nonlocal latest
            latest = counts
            progress.update(task, completed=done(counts), counts=describe(counts))

        try:
            yield update
        except KeyboardInterrupt:
            progress.stop()
            stderr.print(
                f"stopped: {describe(latest)}; run the same command again to do the rest",
                markup=False,
            )
            raise
