"""Multi-label metrics under the Intentonomy protocol: plain arrays in, plain numbers out.

The protocol (Intentonomy's official `eval_utils.py`) picks one global threshold on val, the one
that maximises macro F1, and applies it unchanged to test, so test never influences a choice.
Beside it, every evaluation reports two other threshold rules that papers use: one threshold per
class, each chosen on val (the rule of FDIL and other recent work), and the fixed 0.5 of the
official code and the IntCLIP paper. mAP comes in two forms: scikit-learn's average precision,
and the VOC-style all-point interpolated AP most intent papers report; they differ by about a
point on the same scores (docs/evaluation.md).
Every metric is a percentage; the threshold is a plain probability. A label is predicted when
its score is strictly above the threshold, as in the official code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from sklearn.metrics import average_precision_score, f1_score

THRESHOLD_GRID: tuple[float, ...] = tuple(round(0.05 * step, 2) for step in range(1, 20))
"""0.05, 0.10, ..., 0.95 as exact two-decimal floats (`np.arange` drifts to 0.15000000000000002)."""

FIXED_THRESHOLD = 0.5
"""The threshold of the official code and the IntCLIP paper, chosen on nothing."""

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


class F1s(BaseModel):
    """The three F1s of one split under one threshold rule, in percent."""

    model_config = ConfigDict(frozen=True)

    macro_f1: float
    micro_f1: float
    samples_f1: float


class SplitMetrics(F1s):
    """One split's F1s under one threshold rule, and its two mAPs, in percent.

    `per_class_ap` and `per_class_ap_voc` hold None for a class without a positive label."""

    mAP: float
    mAP_voc: float
    per_class_f1: list[float]
    per_class_ap: list[float | None]
    per_class_ap_voc: list[float | None]
    subset_f1: dict[str, float]
    classes_without_positives: list[int]

    def f1s(self) -> F1s:
        return F1s(macro_f1=self.macro_f1, micro_f1=self.micro_f1, samples_f1=self.samples_f1)


class ScoreSummary(BaseModel):
    """The headline numbers of a protocol run, under the JSON keys of `intclip-train score`.

    The unprefixed F1s are test's at the global threshold chosen on val; `per_class` is test at
    the per-class thresholds chosen on val, `at_0.5` test at 0.5."""

    model_config = ConfigDict(frozen=True, serialize_by_alias=True, validate_by_name=True)

    threshold: float
    macro_f1: float
    micro_f1: float
    samples_f1: float
    mAP: float
    mAP_voc: float
    val_macro_f1: float
    val_micro_f1: float
    val_samples_f1: float
    val_mAP: float
    val_mAP_voc: float
    per_class_thresholds: list[float]
    per_class: F1s
    at_half: F1s = Field(alias="at_0.5")


class ProtocolResult(BaseModel):
    """The thresholds chosen on val, and both splits' metrics under each threshold rule:
    `val`/`test` at the global threshold, `*_per_class` at the per-class thresholds,
    `*_at_half` at 0.5."""

    model_config = ConfigDict(frozen=True)

    threshold: float
    class_thresholds: list[float]
    val: SplitMetrics
    test: SplitMetrics
    val_per_class: SplitMetrics
    test_per_class: SplitMetrics
    val_at_half: SplitMetrics
    test_at_half: SplitMetrics


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


def _per_present_class(
    labels: np.ndarray, scores: np.ndarray, average_precision: Callable[..., float]
) -> np.ndarray:
    """`average_precision(labels, scores)` of each class column; NaN for a class with no
    positive, whose AP is undefined."""
    _check_matrices(labels, scores)
    missing = set(classes_without_positives(labels))
    return np.array(
        [
            np.nan if index in missing else average_precision(labels[:, index], scores[:, index])
            for index in range(labels.shape[1])
        ]
    )


def _scikit_learn_average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    return 100.0 * float(average_precision_score(labels, scores))


def average_precision_per_class(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """scikit-learn's AP of each class in percent; NaN for a class with no positive.

    scikit-learn warns and returns 0 (or NaN, by version) there; NaN keeps such a class from
    counting as a model failure when the split simply has no example of it.
    """
    return _per_present_class(labels, scores, _scikit_learn_average_precision)


def voc_average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """VOC-style AP of one class in percent: all-point interpolation (VOC 2010 and later).

    Images sorted by score, highest first (ties in their given order, as VOC's code sorts);
    precision at each rank made non-increasing from the right (the best precision at any
    recall at least as high), then summed over the steps where recall rises. scikit-learn's AP
    sums the raw precision instead, and treats tied scores as one step, so it reads lower.
    """
    order = np.argsort(-scores, kind="stable")
    hits = labels[order].astype(np.float64)
    true_positives = np.cumsum(hits)
    recall = np.concatenate([[0.0], true_positives / hits.sum(), [1.0]])
    precision = true_positives / np.arange(1, hits.size + 1)
    envelope = np.maximum.accumulate(np.concatenate([[0.0], precision, [0.0]])[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1])
    return 100.0 * float(np.sum((recall[steps + 1] - recall[steps]) * envelope[steps + 1]))


def voc_average_precision_per_class(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """`voc_average_precision` of each class; NaN for a class with no positive, as above."""
    return _per_present_class(labels, scores, voc_average_precision)


def _mean_over_present(per_class: np.ndarray) -> float:
    if np.isnan(per_class).all():
        raise ValueError("mAP is undefined: no class has a positive label")
    return float(np.nanmean(per_class))


def mean_average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mean of per-class AP over the classes that have at least one positive, in percent."""
    return _mean_over_present(average_precision_per_class(labels, scores))


def mean_voc_average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """`mAP_voc`: the mean VOC-style AP over the classes with a positive, in percent."""
    return _mean_over_present(voc_average_precision_per_class(labels, scores))


Thresholds = float | Sequence[float] | np.ndarray
"""One threshold for every class, or one per class."""


def _predict(scores: np.ndarray, threshold: Thresholds) -> np.ndarray:
    """Labels predicted strictly above the threshold (per class when given per class)."""
    return (scores > np.asarray(threshold, dtype=np.float64)).astype(np.int64)


def _f1_percent(labels: np.ndarray, predictions: np.ndarray, average: str) -> float:
    return 100.0 * float(f1_score(labels, predictions, average=average, zero_division=0))


def select_threshold(
    labels: np.ndarray, scores: np.ndarray, grid: Sequence[float] = THRESHOLD_GRID
) -> float:
    """The grid value with the highest macro F1; on a tie the lowest, as `np.argmax` picks."""
    _check_matrices(labels, scores)
    macro = [_f1_percent(labels, _predict(scores, threshold), "macro") for threshold in grid]
    return grid[int(np.argmax(macro))]


def select_class_thresholds(
    labels: np.ndarray, scores: np.ndarray, grid: Sequence[float] = THRESHOLD_GRID
) -> list[float]:
    """Per class, the grid value with the highest F1 of that class; on a tie the lowest.

    A class without a positive has F1 0 at every threshold, so it gets the lowest grid value;
    such a class is warned about wherever it happens (`classes_without_positives`)."""
    _check_matrices(labels, scores)
    per_threshold = np.stack(
        [
            f1_score(labels, _predict(scores, threshold), average=None, zero_division=0)
            for threshold in grid
        ]
    )
    return [grid[int(best)] for best in np.argmax(per_threshold, axis=0)]


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


def _listed(per_class: np.ndarray) -> list[float | None]:
    """NaN (a class without a positive) becomes None, JSON's null."""
    return [None if np.isnan(value) else float(value) for value in per_class]


def evaluate_split(
    labels: np.ndarray,
    scores: np.ndarray,
    threshold: Thresholds,
    subsets: Mapping[str, Sequence[int]] | None = None,
) -> SplitMetrics:
    """All F1s at `threshold` (one, or one per class) plus both mAPs; `subsets` only for
    datasets that define them."""
    _check_matrices(labels, scores)
    predictions = _predict(scores, threshold)
    per_class = 100.0 * f1_score(labels, predictions, average=None, zero_division=0)
    average_precision = average_precision_per_class(labels, scores)
    voc = voc_average_precision_per_class(labels, scores)
    return SplitMetrics(
        macro_f1=float(per_class.mean()),
        micro_f1=_f1_percent(labels, predictions, "micro"),
        samples_f1=_f1_percent(labels, predictions, "samples"),
        mAP=_mean_over_present(average_precision),
        mAP_voc=_mean_over_present(voc),
        per_class_f1=per_class.tolist(),
        per_class_ap=_listed(average_precision),
        per_class_ap_voc=_listed(voc),
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
    """Choose the global and the per-class thresholds on val only, then report val and test
    under each rule, and at 0.5.

    Scores are probabilities in [0, 1]; the threshold grid means nothing for logits.
    """
    _check_matrices(val_labels, val_scores)
    _check_matrices(test_labels, test_scores)
    if val_scores.shape[1] != test_scores.shape[1]:
        raise ValueError(
            f"val has {val_scores.shape[1]} classes but test has {test_scores.shape[1]}"
        )
    threshold = select_threshold(val_labels, val_scores)
    class_thresholds = select_class_thresholds(val_labels, val_scores)
    return ProtocolResult(
        threshold=threshold,
        class_thresholds=class_thresholds,
        val=evaluate_split(val_labels, val_scores, threshold, subsets),
        test=evaluate_split(test_labels, test_scores, threshold, subsets),
        val_per_class=evaluate_split(val_labels, val_scores, class_thresholds, subsets),
        test_per_class=evaluate_split(test_labels, test_scores, class_thresholds, subsets),
        val_at_half=evaluate_split(val_labels, val_scores, FIXED_THRESHOLD, subsets),
        test_at_half=evaluate_split(test_labels, test_scores, FIXED_THRESHOLD, subsets),
    )
