"""The metrics API: threshold rule, mAP, per-class and subset F1, and its input checks."""

from __future__ import annotations

import warnings
from decimal import Decimal

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score

from intclip.metrics.multilabel import (
    INTENTONOMY_SUBSETS,
    THRESHOLD_GRID,
    average_precision_per_class,
    evaluate_protocol,
    evaluate_split,
    mean_average_precision,
    mean_voc_average_precision,
    select_class_thresholds,
    select_threshold,
    subset_f1,
    voc_average_precision,
)


def with_easy_class(labels: list[int], scores: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """A hand-made class plus one that every grid threshold gets right, so only the first counts."""
    return (
        np.array([[label, label] for label in labels]),
        np.array([[score, float(label)] for score, label in zip(scores, labels, strict=True)]),
    )


def random_split(seed: int, images: int = 60, classes: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Labels with every class present, and scores that follow them loosely."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((images, classes)) < 0.3).astype(np.float64)
    labels[0] = 1.0
    scores = np.clip(0.35 * labels + 0.65 * rng.random((images, classes)), 0.0, 1.0)
    return labels, scores


def test_threshold_grid_holds_exact_two_decimal_steps() -> None:
    expected = tuple(float(Decimal("0.05") * step) for step in range(1, 20))
    assert expected == THRESHOLD_GRID


def test_select_threshold_finds_the_only_separating_value() -> None:
    labels, scores = with_easy_class([1, 1, 0, 0], [0.75, 0.72, 0.68, 0.30])
    assert select_threshold(labels, scores) == 0.7


def test_select_threshold_breaks_ties_low_and_predicts_strictly_above() -> None:
    # Every threshold from 0.40 to 0.60 separates the classes; 0.40 is the lowest because a
    # score equal to the threshold is not predicted.
    labels, scores = with_easy_class([1, 1, 0, 0], [0.62, 0.90, 0.40, 0.10])
    assert select_threshold(labels, scores) == 0.4


def test_protocol_takes_the_threshold_from_val_only() -> None:
    val_labels, val_scores = with_easy_class([1, 1, 0, 0], [0.75, 0.72, 0.68, 0.30])
    # Test would be perfect at 0.2, but the val threshold 0.7 must be applied unchanged.
    test_labels, test_scores = with_easy_class([1, 0, 1, 0], [0.9, 0.1, 0.3, 0.15])
    result = evaluate_protocol(val_labels, val_scores, test_labels, test_scores)
    assert result.threshold == 0.7
    assert result.val.macro_f1 == pytest.approx(100.0)
    assert result.test == evaluate_split(test_labels, test_scores, 0.7)
    assert result.test.per_class_f1[0] == pytest.approx(
        100.0 * f1_score([1, 0, 1, 0], [1, 0, 0, 0])
    )


def test_split_f1s_agree_with_scikit_learn() -> None:
    labels, scores = random_split(seed=1)
    metrics = evaluate_split(labels, scores, 0.45)
    predictions = (scores > 0.45).astype(int)
    for average in ("macro", "micro", "samples"):
        expected = 100.0 * f1_score(labels, predictions, average=average, zero_division=0)
        assert getattr(metrics, f"{average}_f1") == pytest.approx(expected)
    expected_per_class = 100.0 * f1_score(labels, predictions, average=None, zero_division=0)
    np.testing.assert_allclose(metrics.per_class_f1, expected_per_class)


def test_map_is_the_mean_of_scikit_learn_average_precision() -> None:
    labels, scores = random_split(seed=2)
    expected = [average_precision_score(labels[:, c], scores[:, c]) for c in range(5)]
    assert mean_average_precision(labels, scores) == pytest.approx(100.0 * np.mean(expected))


def test_class_without_positives_is_left_out_of_map_without_warning() -> None:
    labels, scores = random_split(seed=3)
    labels[:, 2] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        per_class = average_precision_per_class(labels, scores)
        metrics = evaluate_split(labels, scores, 0.5)
    assert np.isnan(per_class[2])
    kept = [0, 1, 3, 4]
    assert metrics.mAP == pytest.approx(mean_average_precision(labels[:, kept], scores[:, kept]))
    assert metrics.classes_without_positives == [2]
    assert metrics.per_class_f1[2] == 0.0


def test_map_without_any_positive_is_an_error() -> None:
    labels, scores = random_split(seed=4)
    with pytest.raises(ValueError, match="no class has a positive"):
        mean_average_precision(np.zeros_like(labels), scores)


def test_intentonomy_subsets_partition_the_28_classes_twice() -> None:
    for partition in (("easy", "medium", "hard"), ("object", "context", "other")):
        members = [index for name in partition for index in INTENTONOMY_SUBSETS[name]]
        assert sorted(members) == list(range(28))


def test_subset_f1_is_the_mean_per_class_f1_of_its_members() -> None:
    per_class = [10.0, 20.0, 30.0, 60.0]
    assert subset_f1(per_class, {"ends": (0, 3), "middle": (1, 2)}) == {
        "ends": 35.0,
        "middle": 25.0,
    }


def test_subsets_are_reported_only_when_given() -> None:
    rng = np.random.default_rng(5)
    labels = (rng.random((80, 28)) < 0.2).astype(np.float64)
    labels[0] = 1.0
    scores = rng.random((80, 28))
    assert evaluate_split(labels, scores, 0.5).subset_f1 == {}
    metrics = evaluate_split(labels, scores, 0.5, INTENTONOMY_SUBSETS)
    assert set(metrics.subset_f1) == set(INTENTONOMY_SUBSETS)
    hard = [metrics.per_class_f1[index] for index in INTENTONOMY_SUBSETS["hard"]]
    assert metrics.subset_f1["hard"] == pytest.approx(np.mean(hard))


def test_subset_naming_a_missing_class_is_an_error() -> None:
    labels, scores = random_split(seed=6)
    with pytest.raises(ValueError, match="subset 'easy' names classes \\[7, 19\\]"):
        evaluate_split(labels, scores, 0.5, INTENTONOMY_SUBSETS)


def test_class_thresholds_maximise_each_class_and_break_ties_low() -> None:
    # class 0 separates at 0.40-0.60 (tie: the lowest), class 1 only at 0.70
    labels = np.array([[1, 1], [1, 1], [0, 0], [0, 0]])
    scores = np.array([[0.62, 0.75], [0.90, 0.72], [0.40, 0.68], [0.10, 0.30]])
    assert select_class_thresholds(labels, scores) == [0.4, 0.7]
    result = evaluate_protocol(labels, scores, labels, scores)
    assert result.class_thresholds == [0.4, 0.7]
    assert result.test_per_class.macro_f1 == 100.0
    assert result.test_at_half.per_class_f1 == pytest.approx([100.0, 80.0])  # 0.68 too


def test_voc_ap_takes_the_best_precision_at_each_recall() -> None:
    # ranks: +, -, +, -, +: precisions 1, 2/3, 3/5 at the three positives, none improved later
    labels = np.array([1, 0, 1, 0, 1])
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    assert voc_average_precision(labels, scores) == pytest.approx(100 * (1 + 2 / 3 + 3 / 5) / 3)
    # -, +, +: the positive at rank 2 (precision 1/2) takes rank 3's 2/3; scikit-learn does not
    labels, scores = np.array([0, 1, 1]), np.array([0.9, 0.8, 0.7])
    assert voc_average_precision(labels, scores) == pytest.approx(100 * 2 / 3)
    assert 100 * average_precision_score(labels, scores) == pytest.approx(100 * (1 / 2 + 2 / 3) / 2)


def test_voc_map_leaves_out_classes_without_positives() -> None:
    labels, scores = random_split(seed=7)
    labels[:, 2] = 0
    per_class = [voc_average_precision(labels[:, c], scores[:, c]) for c in (0, 1, 3, 4)]
    assert mean_voc_average_precision(labels, scores) == pytest.approx(np.mean(per_class))
    metrics = evaluate_split(labels, scores, 0.5)
    assert metrics.per_class_ap_voc[2] is None and metrics.per_class_ap[2] is None
    assert metrics.mAP_voc == pytest.approx(np.mean(per_class))


@pytest.mark.parametrize(
    ("labels", "scores", "message"),
    [
        (np.ones((3, 2)), np.ones((3, 3)), "equal-shaped 2-D"),
        (np.ones(3), np.ones(3), "equal-shaped 2-D"),
        (np.full((3, 2), 0.5), np.ones((3, 2)), "labels must be 0 or 1"),
        (np.ones((3, 1)), np.ones((3, 1)), "at least 2 classes"),
    ],
)
def test_bad_matrices_are_rejected(labels: np.ndarray, scores: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        evaluate_split(labels, scores, 0.5)


def test_val_and_test_must_have_the_same_classes() -> None:
    labels, scores = random_split(seed=8)
    with pytest.raises(ValueError, match="val has 5 classes but test has 4"):
        evaluate_protocol(labels, scores, labels[:, :4], scores[:, :4])
