"""Splitting an open_clip ModifiedResNet (RN50, RN101, RN50x4, ...) into sight and semantic."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from open_clip.modified_resnet import AttentionPool2d, ModifiedResNet
from torch import nn

from intclip.model.encoder import TowerParts, checked_semantic_depth
from intclip.model.position import resize_position_embedding

RESIDUAL_STAGES = ("layer1", "layer2", "layer3", "layer4")
DEFAULT_SEMANTIC_STAGES = 2  # layer3 + layer4, as in IntCLIP


class AttentionPoolProjection(nn.Module):
    """CLIP's attention pool read densely, at any grid size.

    The pool's output for the mean token is the global token, exactly as CLIP computes its image
    embedding; its value and output projections applied at every position give the dense map.
    """

    def __init__(self, pool: AttentionPool2d) -> None:
        super().__init__()
        self.pool = pool
        side = math.isqrt(pool.positional_embedding.shape[0] - 1)
        self.source_grid = (side, side)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, _, height, width = features.shape
        tokens = features.flatten(2).permute(2, 0, 1)
        tokens = torch.cat([tokens.mean(dim=0, keepdim=True), tokens])
        positions = resize_position_embedding(
            self.pool.positional_embedding, self.source_grid, (height, width)
        )
        tokens = tokens + positions[:, None, :].to(tokens.dtype)
        pool = self.pool
        global_token, _ = F.multi_head_attention_forward(
            query=tokens[:1],
            key=tokens,
            value=tokens,
            embed_dim_to_check=tokens.shape[-1],
            num_heads=pool.num_heads,
            q_proj_weight=pool.q_proj.weight,
            k_proj_weight=pool.k_proj.weight,
            v_proj_weight=pool.v_proj.weight,
            in_proj_weight=None,
            in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
            bias_k=None,
            bias_v=None,
            add_zero_attn=False,
            dropout_p=0.0,
            out_proj_weight=pool.c_proj.weight,
            out_proj_bias=pool.c_proj.bias,
            use_separate_proj_weight=True,
            training=False,
            need_weights=False,
        )
        dense = pool.c_proj(pool.v_proj(tokens[1:]))
        return dense.permute(1, 2, 0).reshape(batch, -1, height, width), global_token[0]


def split_resnet(visual: ModifiedResNet, semantic_depth: int | None) -> TowerParts:
    """Trunk = stem + the first stages; deep stages = the deepest `semantic_depth` residual
    stages, the ones IntCLIP copies."""
    requested = DEFAULT_SEMANTIC_STAGES if semantic_depth is None else semantic_depth
    depth = checked_semantic_depth(requested, len(RESIDUAL_STAGES), "residual stages")
    stages = [getattr(visual, name) for name in RESIDUAL_STAGES]
    stem = [
        visual.conv1, visual.bn1, visual.act1,
        visual.conv2, visual.bn2, visual.act2,
        visual.conv3, visual.bn3, visual.act3,
        visual.avgpool,
    ]  # fmt: skip
    split = len(stages) - depth
    return TowerParts(
        trunk=nn.Sequential(*stem, *stages[:split]),
        deep_stages=nn.Sequential(*stages[split:]),
        projection=AttentionPoolProjection(visual.attnpool),
    )
