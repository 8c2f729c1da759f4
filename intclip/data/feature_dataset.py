"""Cached frozen features as a training and scoring dataset, shaped like `ImageDataset`.

Items are (features, target, row), so the loaders, the sampler with its per-epoch seeds, the
distributed sharding and the scoring code serve images and features alike; only the model's
input differs. The whole split lies in memory: a batch is an index into two tensors, so the
loader runs in the main process (no workers to start or feed).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from intclip.data.feature_cache import CachedFeatures


class FeatureBatch(NamedTuple):
    """What the frozen tower gives for a batch: `pooled` [B, D], `dense` [B, D, H, W] or None."""

    pooled: torch.Tensor
    dense: torch.Tensor | None = None


Features = torch.Tensor | FeatureBatch
"""A dataset item's features: the pooled row alone, or a `FeatureBatch` with its dense map."""


class FeatureDataset(Dataset):
    """Row `row` of the cached features with its target row, as `ImageDataset` gives images."""

    draws_at_random = False
    """Items involve no randomness: the training loader need not seed each one."""

    def __init__(self, features: CachedFeatures, targets: np.ndarray, dense: bool) -> None:
        if len(targets) != len(features.pooled):
            raise ValueError(f"{len(targets)} targets for {len(features.pooled)} feature rows")
        self.pooled = features.pooled
        self.dense = features.dense if dense else None
        self.targets = torch.from_numpy(np.ascontiguousarray(targets, dtype=np.float32))

    def __len__(self) -> int:
        return len(self.pooled)

    def __getitem__(self, row: int) -> tuple[Features, torch.Tensor, int]:
        if self.dense is None:
            return self.pooled[row], self.targets[row], row
        return FeatureBatch(self.pooled[row], self.dense[row]), self.targets[row], row


class FeatureInput:
    """A batch of features from the loader on the device, as the model takes them."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __call__(self, features: Features) -> Features:
        if isinstance(features, torch.Tensor):
            return features.to(self.device, non_blocking=True)
        return FeatureBatch(*(f.to(self.device, non_blocking=True) for f in features))
