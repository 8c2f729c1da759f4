"""The class head: image features scored against per-class text features.

The text features come from `intclip.class_text`: frozen cached embeddings, or learned prompts
with a positive and a negative feature per class (DualCoOp). With negatives the logit is the
difference of the positive and the negative score, which is what the official two-way softmax
over (negative, positive) gives: softmax(l_neg, l_pos)[pos] = sigmoid(l_pos - l_neg).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

HeadMode = Literal["global", "regional", "both"]
Similarity = Callable[..., torch.Tensor]


def global_similarity(
    classes: torch.Tensor,
    dense: torch.Tensor,
    global_token: torch.Tensor,
    scale: torch.Tensor,
    attend: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cosine similarity [B, N] of the global token with each class."""
    return F.normalize(global_token, dim=-1) @ classes.T


def regional_similarity(
    classes: torch.Tensor,
    dense: torch.Tensor,
    global_token: torch.Tensor,
    scale: torch.Tensor,
    attend: torch.Tensor | None = None,
) -> torch.Tensor:
    """Class-specific spatial softmax pooling [B, N] of the per-position cosine similarities.

    Each class looks at the positions that resemble it most (or that resemble `attend`, the
    positive features, when pooling the negative ones, as DualCoOp does), so a small object or
    region that carries an intent is not averaged away.
    """
    positions = F.normalize(dense.flatten(2), dim=1)
    similarity = torch.einsum("nd,bdp->bnp", classes, positions)
    guide = similarity if attend is None else torch.einsum("nd,bdp->bnp", attend, positions)
    weights = torch.softmax(scale * guide, dim=-1)
    return (weights * similarity).sum(dim=-1)


def combined_similarity(
    classes: torch.Tensor,
    dense: torch.Tensor,
    global_token: torch.Tensor,
    scale: torch.Tensor,
    attend: torch.Tensor | None = None,
) -> torch.Tensor:
    """The mean of the global and the regional similarity."""
    global_part = global_similarity(classes, dense, global_token, scale)
    return (global_part + regional_similarity(classes, dense, global_token, scale, attend)) / 2


SIMILARITY_BY_HEAD: dict[str, Similarity] = {
    "global": global_similarity,
    "regional": regional_similarity,
    "both": combined_similarity,
}


class ClassHead(nn.Module):
    """Logits [B, N]: temperature * similarity + per-class bias; the similarity is the positive
    one, minus the negative one when the class features include negatives."""

    def __init__(
        self,
        num_classes: int,
        mode: HeadMode,
        initial_logit_scale: float,
        initial_class_bias: float,
    ) -> None:
        super().__init__()
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(initial_logit_scale)))
        self.class_bias = nn.Parameter(torch.full((num_classes,), float(initial_class_bias)))
        self.similarity = SIMILARITY_BY_HEAD[mode]

    def forward(
        self,
        dense: torch.Tensor,
        global_token: torch.Tensor,
        positive: torch.Tensor,
        negative: torch.Tensor | None = None,
    ) -> torch.Tensor:
        scale = self.log_logit_scale.exp()
        similarity = self.similarity(positive, dense, global_token, scale)
        if negative is not None:
            similarity = similarity - self.similarity(
                negative, dense, global_token, scale, attend=positive
            )
        return scale * similarity + self.class_bias
