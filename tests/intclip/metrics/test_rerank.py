"""Re-ranking each image's top classes (`eval.rerank_top_k`, issue 23)."""

from __future__ import annotations

import numpy as np
import pytest

from intclip.metrics.rerank import rerank_top_k


def test_the_top_k_scores_are_handed_out_again_in_the_second_order():
    scores = np.array([[0.9, 0.8, 0.1, 0.7]])
    by = np.array([[0.1, 0.5, 0.9, 0.3]])
    np.testing.assert_array_equal(rerank_top_k(scores, by, 2), [[0.8, 0.9, 0.1, 0.7]])
    np.testing.assert_array_equal(rerank_top_k(scores, by, 3), [[0.7, 0.9, 0.1, 0.8]])
    np.testing.assert_array_equal(rerank_top_k(scores, by, 9), [[0.1, 0.8, 0.9, 0.7]])


def test_each_row_keeps_its_values_and_the_rest_of_its_classes():
    generator = np.random.default_rng(0)
    scores, by = generator.random((50, 8)), generator.random((50, 8))
    reranked = rerank_top_k(scores, by, 3)
    np.testing.assert_array_equal(np.sort(reranked, axis=1), np.sort(scores, axis=1))
    outside = np.argsort(-scores, axis=1)[:, 3:]
    np.testing.assert_array_equal(
        np.take_along_axis(reranked, outside, 1), np.take_along_axis(scores, outside, 1)
    )
    top = np.argsort(-scores, axis=1)[:, :3]
    order = np.argsort(-np.take_along_axis(reranked, top, 1), axis=1)
    preferred = np.argsort(-np.take_along_axis(by, top, 1), axis=1)
    np.testing.assert_array_equal(order, preferred)


def test_ties_keep_the_earlier_class_first():
    scores = np.array([[0.5, 0.5, 0.5]])
    np.testing.assert_array_equal(rerank_top_k(scores, np.array([[0.0, 1.0, 1.0]]), 2), scores)
    reranked = rerank_top_k(np.array([[0.9, 0.8, 0.7]]), np.array([[0.2, 0.2, 0.2]]), 3)
    np.testing.assert_array_equal(reranked, [[0.9, 0.8, 0.7]])


def test_matrices_of_other_shapes_are_refused():
    with pytest.raises(ValueError, match="differ"):
        rerank_top_k(np.zeros((2, 3)), np.zeros((2, 4)), 1)
