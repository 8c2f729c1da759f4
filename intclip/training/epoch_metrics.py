"""`metrics.csv`: one row per finished epoch, with val metrics at the threshold best on val,
and the learning rate each parameter group used (`lr_<group>`, at the epoch's last step)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from intclip.data.dataset import LabelIndex
from intclip.metrics.multilabel import evaluate_split, select_threshold
from intclip.training.state import TrainingProgress
from intclip.training.step import EpochTrained
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
    "images_per_s",
    "epochs_since_best",
)
"""The columns every row has; then one `lr_<group>` column per parameter group."""
LR_PREFIX = "lr_"


def validation_row(
    val_index: LabelIndex,
    scores: np.ndarray,
    progress: TrainingProgress,
    trained: EpochTrained,
) -> dict[str, float]:
    """Val metrics at the threshold that is best on val, as the protocol will choose it."""
    labels = (val_index.targets > 0).astype(np.int64)
    threshold = select_threshold(labels, scores)
    metrics = evaluate_split(labels, scores, threshold)
    return {
        "epoch": progress.epoch,
        "step": progress.step,
        "train_loss": trained.loss,
        "val_mAP": metrics.mAP,
        "val_macro_f1": metrics.macro_f1,
        "val_micro_f1": metrics.micro_f1,
        "val_samples_f1": metrics.samples_f1,
        "val_threshold": threshold,
        "images_per_s": trained.images_per_s,
        **{f"{LR_PREFIX}{group}": lr for group, lr in trained.learning_rates.items()},
    }


def write_metrics(path: Path, rows: list[dict[str, float]]) -> None:
    """The CSV of every epoch `last.pt` holds, rewritten atomically after it: a rerun or a
    resume after a partial epoch never duplicates a row, and the log never runs ahead."""
    buffer = io.StringIO()
    more = [key for row in rows for key in row if key not in METRIC_COLUMNS]
    columns = [*METRIC_COLUMNS, *dict.fromkeys(more)]  # a run from before lr_<group> keeps lr
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def final_report(rows: list[dict[str, float]], ending: str) -> dict[str, float | str]:
    """What the trackers get when a run ends: how, and its best epoch's row."""
    report: dict[str, float | str] = {"ending": ending, "epochs": len(rows)}
    if rows:
        best = max(rows, key=lambda row: row["val_mAP"])
        report.update({f"best_{key}": value for key, value in best.items()})
    return report
