"""Re-ranking each image's top classes by a second score (`eval.rerank_top_k`).

A trained model's scores decide which k classes are an image's candidates; a second score (the
zero-shot similarity with each class's descriptions, scored one by one and pooled) decides their
order among themselves. The k score values stay as they were and are handed out again in the new
order, so thresholds chosen on val still mean what they meant and the classes outside the top k
keep their scores.
"""

from __future__ import annotations

import numpy as np


def rerank_top_k(scores: np.ndarray, by: np.ndarray, top_k: int) -> np.ndarray:
    """`scores` [images, classes] with each row's `top_k` highest reordered by `by` (same
    shape): the class `by` prefers among them gets the highest of their scores, and so on. Ties
    keep the earlier class first, in both orders."""
    if scores.shape != by.shape:
        raise ValueError(f"scores {scores.shape} and re-ranking scores {by.shape} differ")
    top_k = min(top_k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :top_k]
    values = np.take_along_axis(scores, top, axis=1)
    preferred = np.argsort(-np.take_along_axis(by, top, axis=1), axis=1, kind="stable")
    reranked = scores.copy()
    np.put_along_axis(reranked, np.take_along_axis(top, preferred, axis=1), values, axis=1)
    return reranked
