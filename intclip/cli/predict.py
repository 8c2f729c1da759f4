"""`intclip-train predict`: a few images to stdout, or any number to a file that resumes."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from intclip.evaluation.predict import ImagePrediction, Predictor
from intclip.evaluation.prediction_files import PredictionFile
from pipeline.common.console import stderr
from pipeline.common.errors import UserError


def _say(message: str) -> None:
    stderr.print(message, markup=False)


def _report_skipped(skipped: list[ImagePrediction]) -> None:
    for prediction in skipped:
        _say(f"skipped: {prediction.error}")
    if skipped:
        _say(f"warning: skipped {len(skipped)} unreadable image(s)")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM ends the run as Ctrl-C does: the file is closed after its last whole batch and
    the DataLoader's workers are stopped, not left behind."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def predict_to_stdout(
    predictor: Predictor,
    images: list[Path],
    top: int,
    workers: int,
    batch_size: int | None,
    formatter: Callable[[list[ImagePrediction]], str],
) -> str:
    """The predictions as `formatter` writes them; unreadable images are told on stderr."""
    predictions = [
        p for batch in predictor.batches(images, top, workers, batch_size) for p in batch
    ]
    readable = [p for p in predictions if p.error is None]
    skipped = [p for p in predictions if p.error is not None]
    if not readable:
        raise UserError(f"none of the {len(images)} image(s) could be read; {skipped[0].error}")
    _report_skipped(skipped)
    return formatter(readable)


def predict_to_file(
    predictor: Predictor,
    images: list[Path],
    output: Path,
    workers: int,
    batch_size: int | None,
) -> None:
    """Append a row per image not yet in `output`, one batch at a time."""
    table = PredictionFile(output, predictor.nodes)
    todo = [path for path in images if str(path) not in table.done]
    if len(todo) < len(images):
        _say(f"{output}: {len(images) - len(todo)} image(s) already there, skipped")
    skipped: list[ImagePrediction] = []
    batches = predictor.batches(todo, None, workers, batch_size)
    try:
        with terminate_as_interrupt():
            for batch in batches:
                table.append(batch)
                skipped += [p for p in batch if p.error is not None]
    finally:
        batches.close()  # stops the DataLoader's workers now, also on an interruption
        table.close()
    _report_skipped(skipped)
    _say(
        f"{output}: {len(todo) - len(skipped)} image(s) predicted, {len(skipped)} unreadable "
        "(rows with an error)"
    )
