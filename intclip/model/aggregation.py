"""Sight-assisted aggregation: the semantic map decides where to look, the sight map what to see."""

from __future__ import annotations

import torch
from torch import nn

from pipeline.common.errors import UserError


class SightAssistedAggregation(nn.Module):
    """Position attention whose queries and keys come from the semantic map, values from sight.

    `out = alpha * attended + (sight + semantic) / 2` with `alpha` learnable and starting at 0,
    so training starts from the plain average of the two branches.
    """

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        if channels // reduction < 1:
            raise UserError(
                f"aggregation_reduction {reduction} leaves no channels of the {channels} available"
            )
        self.query = nn.Conv2d(channels, channels // reduction, kernel_size=1)
        self.key = nn.Conv2d(channels, channels // reduction, kernel_size=1)
        self.value = nn.Conv2d(channels, channels, kernel_size=1)
        self.alpha = nn.Parameter(torch.zeros(()))

    def forward(self, semantic: torch.Tensor, sight: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = semantic.shape
        queries = self.query(semantic).flatten(2).transpose(1, 2)
        keys = self.key(semantic).flatten(2)
        attention = torch.softmax(queries @ keys, dim=-1)
        values = self.value(sight).flatten(2)
        attended = (values @ attention.transpose(1, 2)).reshape(batch, channels, height, width)
        return self.alpha * attended + (sight + semantic) / 2
