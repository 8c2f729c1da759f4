"""`metrics.csv`: one row per finished epoch, with val metrics at the threshold best on val."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from intclip.data.dataset import LabelIndex
from intclip.metrics.multilabel import evaluate_split, select_threshold
from intclip.training.optimizer import Optimisation
from intclip.training.state import TrainingProgress
from pipeline.common.files import atomic_write_text

METRIC_COLUMNS = (
    "epoch",
    "step",
    "train_loss",
    "val_mAP",
    "val_macro_f1",
    "val_micro_f1",
    "val_samples_f1",
    "val_threshold",
    "lr",
    "images_per_s",
    "epochs_since_best",
)


def validation_row(
    val_index: LabelIndex,
    scores: np.ndarray,
    progress: TrainingProgress,
    train_loss: float,
    optimisation: Optimisation,
    images_per_s: float,
) -> dict[str, float]:
    """Val metrics at the threshold that is best on val, as the protocol will choose it."""
    labels = (val_index.targets > 0).astype(np.int64)
    threshold = select_threshold(labels, scores)
    metrics = evaluate_split(labels, scores, threshold)
    return {
        "epoch": progress.epoch,
        "step": progress.step,
        "train_loss": train_loss,
        "val_mAP": metrics.mAP,
        "val_macro_f1": metrics.macro_f1,
        "val_micro_f1": metrics.micro_f1,
        "val_samples_f1": metrics.samples_f1,
        "val_threshold": threshold,
        "lr": optimisation.scheduler.get_last_lr()[0],
        "images_per_s": images_per_s,
    }


def write_metrics(path: Path, rows: list[dict[str, float]]) -> None:
    """The CSV of every epoch `last.pt` holds, rewritten atomically after it: a rerun or a
    resume after a partial epoch never duplicates a row, and the log never runs ahead."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())
