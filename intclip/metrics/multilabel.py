"""Multi-label metrics under the Intentonomy protocol: plain arrays in, plain numbers out.

The protocol (Intentonomy's official `eval_utils.py`) picks one global threshold on val, the one
that maximises macro F1, and applies it unchanged to test, so test never influences a choice.
Every metric is a percentage; the threshold is a plain probability. A label is predicted when
its score is strictly above the threshold, as in the official code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict
from sklearn.metrics import average_precision_score, f1_score

THRESHOLD_GRID: tuple[float, ...] = tuple(round(0.05 * step, 2) for step in range(1, 20))
"""0.05, 0.10, ..., 0.95 as exact two-decimal floats (`np.arange` drifts to 0.15000000000000002)."""

MIN_CLASSES = 2
"""scikit-learn reads a one-column matrix as binary labels, where samples F1 does not exist."""

INTENTONOMY_SUBSETS: dict[str, tuple[int, ...]] = {
    "easy": (0, 7, 19),
    "medium": (1, 3, 4, 6, 9, 10, 11, 12, 13, 14, 15, 16, 18, 22, 26),
    "hard": (2, 5, 8, 17, 20, 21, 23, 24, 25, 27),
    "object": (0, 3, 10, 11, 12, 16, 23),
    "context": (7, 8),
    "other": (1, 2, 4, 5, 6, 9, 13, 14, 15, 17, 18, 19, 20, 21, 22, 24, 25, 26, 27),
}
"""The 28 Intentonomy classes grouped by difficulty and by content, as the official code reports."""


class SplitMetrics(BaseModel):
    """One split's F1s at a fixed threshold, and its mAP, in percent."""

    model_config = ConfigDict(frozen=True)

    macro_f1: float
    micro_f1: float
    samples_f1: float
    mAP: float
    per_class_f1: list[float]
    subset_f1: dict[str, float]
    classes_without_positives: list[int]


class ScoreSummary(BaseModel):
    """The headline numbers of a protocol run, under the JSON keys of `intclip-train score`."""

    model_config = ConfigDict(frozen=True)

    threshold: float
    macro_f1: float
    micro_f1: float
    samples_f1: float
    mAP: float
    val_macro_f1: float
    val_micro_f1: float
    val_samples_f1: float
    val_mAP: float


class ProtocolResult(BaseModel):
    """The val-chosen threshold and both splits' metrics at that threshold."""

    model_config = ConfigDict(frozen=True)

    threshold: float
    val: SplitMetrics
    test: SplitMetrics

    def summary(self) -> ScoreSummary:
        """The flat headline view, so any method's numbers line up key for key."""
        return ScoreSummary(
            threshold=self.threshold,
            macro_f1=self.test.macro_f1,
            micro_f1=self.test.micro_f1,
            samples_f1=self.test.samples_f1,
            mAP=self.test.mAP,
            val_macro_f1=self.val.macro_f1,
            val_micro_f1=self.val.micro_f1,
            val_samples_f1=self.val.samples_f1,
            val_mAP=self.val.mAP,
        )


def _check_matrices(labels: np.ndarray, scores: np.ndarray) -> None:
    """Fail early with a plain message instead of deep inside scikit-learn."""
    if labels.ndim != 2 or labels.shape != scores.shape:
        raise ValueError(
            f"labels {labels.shape} and scores {scores.shape} must be equal-shaped 2-D matrices"
        )
    if labels.shape[1] < MIN_CLASSES:
        raise ValueError(f"multi-label metrics need at least {MIN_CLASSES} classes")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")


def classes_without_positives(labels: np.ndarray) -> list[int]:
    """Classes no sample carries: their AP is undefined and their F1 is 0 whatever is predicted."""
    return [int(index) for index in np.flatnonzero(labels.sum(axis=0) == 0)]


def average_precision_per_class(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """scikit-learn's AP of each class in percent; NaN for a class with no positive.

    scikit-learn warns and returns 0 (or NaN, by version) there; NaN keeps such a class from
    counting as a model failure when the split simply has no example of it.
    """
    _check_matrices(labels, scores)
    missing = set(classes_without_positives(labels))
    return np.array(
        [
            np.nan
            if index in missing
            else 100.0 * average_precision_score(labels[:, index], scores[:, index])
            for index in range(labels.shape[1])
        ]
    )


def mean_average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mean of per-class AP over the classes that have at least one positive, in percent."""
    per_class = average_precision_per_class(labels, scores)
    if np.isnan(per_class).all():
        raise ValueError("mAP is undefined: no class has a positive label")
    return float(np.nanmean(per_class))


def _predict(scores: np.ndarray, threshold: float) -> np.ndarray:
    return (scores > threshold).astype(np.int64)


def _f1_percent(labels: np.ndarray, predictions: np.ndarray, average: str) -> float:
    return 100.0 * float(f1_score(labels, predictions, average=average, zero_division=0))


def select_threshold(
    labels: np.ndarray, scores: np.ndarray, grid: Sequence[float] = THRESHOLD_GRID
) -> float:
    """The grid value with the highest macro F1; on a tie the lowest, as `np.argmax` picks."""
    _check_matrices(labels, scores)
    macro = [_f1_percent(labels, _predict(scores, threshold), "macro") for threshold in grid]
    return grid[int(np.argmax(macro))]


def subset_f1(
    per_class_f1: Sequence[float], subsets: Mapping[str, Sequence[int]]
) -> dict[str, float]:
    """Mean per-class F1 within each subset, the official code's subset macro F1."""
    per_class = np.asarray(per_class_f1, dtype=np.float64)
    for name, indices in subsets.items():
        out_of_range = [index for index in indices if not 0 <= index < per_class.size]
        if out_of_range:
            raise ValueError(
                f"subset {name!r} names classes {out_of_range}, but there are {per_class.size}"
            )
    return {name: float(per_class[list(indices)].mean()) for name, indices in subsets.items()}


def evaluate_split(
    labels: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    subsets: Mapping[str, Sequence[int]] | None = None,
) -> SplitMetrics:
    """All F1s at `threshold` plus mAP; `subsets` only for datasets that define them."""
    _check_matrices(labels, scores)
    predictions = _predict(scores, threshold)
    per_class = 100.0 * f1_score(labels, predictions, average=None, zero_division=0)
    return SplitMetrics(
        macro_f1=float(per_class.mean()),
        micro_f1=_f1_percent(labels, predictions, "micro"),
        samples_f1=_f1_percent(labels, predictions, "samples"),
        mAP=mean_average_precision(labels, scores),
        per_class_f1=per_class.tolist(),
        subset_f1=subset_f1(per_class, subsets or {}),
        classes_without_positives=classes_without_positives(labels),
    )


def evaluate_protocol(
    val_labels: np.ndarray,
    val_scores: np.ndarray,
    test_labels: np.ndarray,
    test_scores: np.ndarray,
    subsets: Mapping[str, Sequence[int]] | None = None,
) -> ProtocolResult:
    """Choose the threshold on val only, then report val and test at that threshold.

    Scores are probabilities in [0, 1]; the threshold grid means nothing for logits.
    """
    _check_matrices(val_labels, val_scores)
    _check_matrices(test_labels, test_scores)
    if val_scores.shape[1] != test_scores.shape[1]:
        raise ValueError(
            f"val has {val_scores.shape[1]} classes but test has {test_scores.shape[1]}"
        )
    threshold = select_threshold(val_labels, val_scores)
    return ProtocolResult(
        threshold=threshold,
        val=evaluate_split(val_labels, val_scores, threshold, subsets),
        test=evaluate_split(test_labels, test_scores, threshold, subsets),
    )
