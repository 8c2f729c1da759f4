"""Which CLIP image towers IntCLIP can split: one encoder builder per tower type."""

from __future__ import annotations

from collections.abc import Callable

from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import VisionTransformer
from torch import nn

from intclip.model.encoder import SightSemanticEncoder
from intclip.model.resnet_tower import build_resnet_encoder
from intclip.model.vit_tower import build_vit_encoder
from pipeline.common.errors import UserError

ENCODER_BUILDERS: dict[type[nn.Module], Callable[..., SightSemanticEncoder]] = {
    ModifiedResNet: build_resnet_encoder,
    VisionTransformer: build_vit_encoder,
}


def build_sight_semantic_encoder(
    visual: nn.Module, semantic_depth: int | None
) -> SightSemanticEncoder:
    """Split `visual` (a CLIP image tower) into trunk, sight branch and semantic copy."""
    builder = ENCODER_BUILDERS.get(type(visual))
    if builder is None:
        supported = ", ".join(tower.__name__ for tower in ENCODER_BUILDERS)
        raise UserError(
            f"image tower {type(visual).__name__} is not supported (supported: {supported})"
        )
    return builder(visual, semantic_depth)
