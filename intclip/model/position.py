"""Resizing CLIP's learned position embeddings, so a tower takes any input size it can."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def resize_position_embedding(
    embedding: torch.Tensor, source_grid: tuple[int, int], target_grid: tuple[int, int]
) -> torch.Tensor:
    """Bicubically resample the grid part of `[1 + h*w, C]` positions; the leading slot stays.

    The leading slot belongs to the class token (ViT) or the mean token (attention pool) and has no
    place on the grid. Resampling matches open_clip's own `resize_pos_embed`.
    """
    source_grid, target_grid = tuple(source_grid), tuple(target_grid)
    if source_grid == target_grid:
        return embedding
    leading, grid = embedding[:1], embedding[1:]
    grid = grid.reshape(1, *source_grid, -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(
        grid, size=target_grid, mode="bicubic", antialias=True, align_corners=False
    )
    grid = grid.permute(0, 2, 3, 1).reshape(-1, embedding.shape[-1]).to(embedding.dtype)
    return torch.cat([leading, grid])
