"""Asymmetric loss (Ridnik et al., ICCV 2021) for multi-label training with many negatives."""

from __future__ import annotations

import torch
from torch import nn


class AsymmetricLoss(nn.Module):
    """Focal weighting that is harsher on easy negatives, plus a probability margin for them.

    Intentonomy images have one or two of 28 intents, so negatives dominate; `gamma_neg` and `clip`
    stop them from drowning the positives. Targets may be soft (in [0, 1]): each element's loss is
    interpolated between its positive and negative terms. The focal weight is treated as a constant
    in the backward pass, as in the reference implementation. Reduction: the mean over all elements.
    """

    def __init__(
        self, gamma_neg: float = 2.0, gamma_pos: float = 1.0, clip: float = 0.05, eps: float = 1e-8
    ) -> None:
        super().__init__()
        self.gamma_neg = gamma_neg
        self.gamma_pos = gamma_pos
        self.clip = clip
        self.eps = eps

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if logits.shape != targets.shape:
            raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)}")
        targets = targets.float()
        prob_pos = torch.sigmoid(logits.float())
        prob_neg = (1 - prob_pos + self.clip).clamp(max=1) if self.clip > 0 else 1 - prob_pos
        loss = targets * torch.log(prob_pos.clamp(min=self.eps))
        loss = loss + (1 - targets) * torch.log(prob_neg.clamp(min=self.eps))
        with torch.no_grad():
            prob_true = prob_pos * targets + prob_neg * (1 - targets)
            gamma = self.gamma_pos * targets + self.gamma_neg * (1 - targets)
            focal_weight = torch.pow(1 - prob_true, gamma)
        return -(loss * focal_weight).mean()
