"""Which CLIP image towers can be read densely or split: one splitter per tower type."""

from __future__ import annotations

from collections.abc import Callable

from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import VisionTransformer
from torch import nn

from intclip.model.encoder import DenseTower, SightSemanticEncoder, TowerParts
from intclip.model.resnet_tower import split_resnet
from intclip.model.vit_tower import split_vit
from pipeline.common.errors import UserError

TOWER_SPLITTERS: dict[type[nn.Module], Callable[[nn.Module, int | None], TowerParts]] = {
    ModifiedResNet: split_resnet,
    VisionTransformer: split_vit,
}


def split_tower(visual: nn.Module, semantic_depth: int | None) -> TowerParts:
    """`visual` (a CLIP image tower) cut into trunk, deep stages and projection."""
    splitter = TOWER_SPLITTERS.get(type(visual))
    if splitter is None:
        supported = ", ".join(tower.__name__ for tower in TOWER_SPLITTERS)
        raise UserError(
            f"image tower {type(visual).__name__} is not supported (supported: {supported})"
        )
    return splitter(visual, semantic_depth)


def build_sight_semantic_encoder(
    visual: nn.Module, semantic_depth: int | None
) -> SightSemanticEncoder:
    """Split `visual` into trunk, sight branch and semantic copy."""
    return SightSemanticEncoder(*split_tower(visual, semantic_depth))


def build_dense_tower(visual: nn.Module) -> DenseTower:
    """`visual` whole, giving its dense map in the joint space beside its global token."""
    return DenseTower(split_tower(visual, None))
