"""The sight-semantic image encoder: shared frozen trunk, frozen sight branch, trained copy."""

from __future__ import annotations

import copy
from typing import NamedTuple

import torch
from torch import nn

from pipeline.common.errors import UserError


class EncodedImages(NamedTuple):
    """Both branches in CLIP's joint space: dense maps [B, D, H, W] and global tokens [B, D]."""

    sight_map: torch.Tensor
    semantic_map: torch.Tensor
    sight_global: torch.Tensor
    semantic_global: torch.Tensor


class TowerParts(NamedTuple):
    """A CLIP image tower cut in three: shared `trunk`, the `deep_stages` after it, and the
    frozen `projection` of their output to a dense map and a global token in the joint space."""

    trunk: nn.Module
    deep_stages: nn.Module
    projection: nn.Module


class DenseTower(nn.Module):
    """A whole CLIP image tower read densely: (dense map [B, D, H, W], global token [B, D]) in
    the joint space, the global token being CLIP's own image embedding. Nothing is copied."""

    def __init__(self, parts: TowerParts) -> None:
        super().__init__()
        self.trunk, self.deep_stages, self.projection = parts

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.projection(self.deep_stages(self.trunk(images)))


class SightSemanticEncoder(nn.Module):
    """A CLIP image tower split in three, so the trunk runs once and only one copy is trained.

    `trunk` maps images to shared features; `deep_stages` is the rest of the tower and becomes the
    frozen sight branch, while a deep copy of it becomes the trainable semantic branch; `projection`
    (frozen, shared by both branches) maps features to a dense map and a global token in CLIP's
    joint space, so both branches stay comparable with CLIP's text embeddings.
    """

    def __init__(self, trunk: nn.Module, deep_stages: nn.Module, projection: nn.Module) -> None:
        super().__init__()
        self.trunk = trunk
        self.sight = deep_stages
        self.projection = projection
        self.semantic = copy.deepcopy(deep_stages)
        for module in self.frozen_modules():
            module.requires_grad_(False)
        self.semantic.requires_grad_(True)
        self.train(self.training)

    def frozen_modules(self) -> tuple[nn.Module, ...]:
        """The parts that keep CLIP's weights and statistics."""
        return (self.trunk, self.sight, self.projection)

    def train(self, mode: bool = True) -> SightSemanticEncoder:
        """Only the semantic copy follows `mode`: frozen BatchNorm statistics must never move."""
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()
        return self

    def forward(self, images: torch.Tensor) -> EncodedImages:
        with torch.no_grad():
            shared = self.trunk(images)
            sight_map, sight_global = self.projection(self.sight(shared))
        semantic_map, semantic_global = self.projection(self.semantic(shared))
        return EncodedImages(sight_map, semantic_map, sight_global, semantic_global)


def checked_semantic_depth(depth: int, available: int, unit: str) -> int:
    """How many of the deepest stages are copied; at least one, at most the whole tower."""
    if not 1 <= depth <= available:
        raise UserError(
            f"semantic_depth {depth} is out of range: this tower has {available} {unit}"
        )
    return depth
