"""Splitting an open_clip VisionTransformer (ViT-B-32, ViT-B-16, ViT-L-14, ...) into branches."""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import torch
from open_clip.transformer import VisionTransformer
from torch import nn

from intclip.model.encoder import TowerParts, checked_semantic_depth
from intclip.model.position import resize_position_embedding
from pipeline.common.errors import UserError


class TokenGrid(NamedTuple):
    """Transformer tokens [B, 1 + H*W, C] (class token first) and the patch grid (H, W)."""

    tokens: torch.Tensor
    grid: tuple[int, int]


class PatchEmbedding(nn.Module):
    """Patches, class token, positions resized to the input's grid, then `ln_pre`.

    Patch dropout is left out: it is a training regulariser and this part stays frozen.
    """

    def __init__(self, visual: VisionTransformer) -> None:
        super().__init__()
        self.conv1 = visual.conv1
        self.class_embedding = visual.class_embedding
        self.positional_embedding = visual.positional_embedding
        self.ln_pre = visual.ln_pre
        self.source_grid = tuple(visual.grid_size)

    def forward(self, images: torch.Tensor) -> TokenGrid:
        patches = self.conv1(images)
        grid = (patches.shape[-2], patches.shape[-1])
        tokens = patches.flatten(2).transpose(1, 2)
        class_token = self.class_embedding.to(tokens.dtype).expand(tokens.shape[0], 1, -1)
        tokens = torch.cat([class_token, tokens], dim=1)
        positions = resize_position_embedding(self.positional_embedding, self.source_grid, grid)
        return TokenGrid(self.ln_pre(tokens + positions.to(tokens.dtype)), grid)


class TransformerBlocks(nn.Module):
    """A run of residual attention blocks that keeps track of the patch grid."""

    def __init__(self, blocks: Iterable[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, features: TokenGrid) -> TokenGrid:
        tokens = features.tokens
        for block in self.blocks:
            tokens = block(tokens)
        return TokenGrid(tokens, features.grid)


class TokenProjection(nn.Module):
    """Every token through `ln_post` and `proj`; the class token is the global one, as in CLIP."""

    def __init__(self, visual: VisionTransformer) -> None:
        super().__init__()
        self.ln_post = visual.ln_post
        self.proj = visual.proj

    def forward(self, features: TokenGrid) -> tuple[torch.Tensor, torch.Tensor]:
        projected = self.ln_post(features.tokens) @ self.proj
        height, width = features.grid
        dense = projected[:, 1:].transpose(1, 2).reshape(projected.shape[0], -1, height, width)
        return dense, projected[:, 0]


def split_vit(visual: VisionTransformer, semantic_depth: int | None) -> TowerParts:
    """Trunk = embedding + the first blocks; deep stages = the last `semantic_depth` blocks, the
    ones IntCLIP copies.

    By default the deeper half of the blocks is copied, as IntCLIP copies two of four ResNet stages.
    """
    _check_class_token_tower(visual)
    blocks = list(visual.transformer.resblocks)
    requested = (len(blocks) + 1) // 2 if semantic_depth is None else semantic_depth
    depth = checked_semantic_depth(requested, len(blocks), "transformer blocks")
    split = len(blocks) - depth
    return TowerParts(
        trunk=nn.Sequential(PatchEmbedding(visual), TransformerBlocks(blocks[:split])),
        deep_stages=TransformerBlocks(blocks[split:]),
        projection=TokenProjection(visual),
    )


def _check_class_token_tower(visual: VisionTransformer) -> None:
    """Dense features need CLIP's plain layout: a class token, no attentional pooler, a proj."""
    if visual.attn_pool is not None:
        raise UserError("ViT towers with an attentional pooler (CoCa) are not supported")
    if visual.pool_type != "tok":
        raise UserError(
            f"ViT towers pooled with {visual.pool_type!r} are not supported (need a class token)"
        )
    if visual.proj is None:
        raise UserError("ViT towers without a joint-space projection are not supported")
