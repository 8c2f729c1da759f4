"""The class head: image features scored against the frozen class text embeddings."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import UserError

HeadMode = Literal["global", "regional", "both"]
Similarity = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def global_similarity(
    classes: torch.Tensor, dense: torch.Tensor, global_token: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """Cosine similarity [B, N] of the global token with each class."""
    return F.normalize(global_token, dim=-1) @ classes.T


def regional_similarity(
    classes: torch.Tensor, dense: torch.Tensor, global_token: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """Class-specific spatial softmax pooling [B, N] of the per-position cosine similarities.

    Each class looks at the positions that resemble it most, so a small object or region that
    carries an intent is not averaged away.
    """
    positions = F.normalize(dense.flatten(2), dim=1)
    similarity = torch.einsum("nd,bdp->bnp", classes, positions)
    weights = torch.softmax(scale * similarity, dim=-1)
    return (weights * similarity).sum(dim=-1)


def combined_similarity(
    classes: torch.Tensor, dense: torch.Tensor, global_token: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """The mean of the global and the regional similarity."""
    global_part = global_similarity(classes, dense, global_token, scale)
    return (global_part + regional_similarity(classes, dense, global_token, scale)) / 2


SIMILARITY_BY_HEAD: dict[str, Similarity] = {
    "global": global_similarity,
    "regional": regional_similarity,
    "both": combined_similarity,
}


class ClassHead(nn.Module):
    """Logits [B, N]: temperature * similarity + per-class bias, against frozen class texts."""

    def __init__(
        self,
        class_embeddings: torch.Tensor,
        embed_dim: int,
        mode: HeadMode,
        initial_logit_scale: float,
        initial_class_bias: float,
    ) -> None:
        super().__init__()
        _check_class_embeddings(class_embeddings, embed_dim)
        normalized = F.normalize(class_embeddings.detach().float(), dim=-1)
        self.register_buffer("class_embeddings", normalized, persistent=False)
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(initial_logit_scale)))
        self.class_bias = nn.Parameter(torch.full((len(normalized),), float(initial_class_bias)))
        self.similarity = SIMILARITY_BY_HEAD[mode]

    def forward(self, dense: torch.Tensor, global_token: torch.Tensor) -> torch.Tensor:
        scale = self.log_logit_scale.exp()
        similarity = self.similarity(self.class_embeddings, dense, global_token, scale)
        return scale * similarity + self.class_bias


def _check_class_embeddings(embeddings: torch.Tensor, embed_dim: int) -> None:
    if not isinstance(embeddings, torch.Tensor) or not embeddings.is_floating_point():
        raise UserError("class embeddings must be a float tensor [num_classes, embed_dim]")
    if embeddings.ndim != 2 or embeddings.shape[0] == 0 or embeddings.shape[1] != embed_dim:
        raise UserError(
            f"class embeddings have shape {tuple(embeddings.shape)}; this CLIP needs "
            f"[num_classes, {embed_dim}]"
        )
    if not torch.isfinite(embeddings).all() or (embeddings.norm(dim=-1) == 0).any():
        raise UserError("class embeddings contain non-finite values or all-zero rows")
