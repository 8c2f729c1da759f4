"""Asymmetric loss (Ridnik et al., ICCV 2021) for multi-label training with many negatives."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Reduction = Literal["mean", "sum"]


class AsymmetricLoss(nn.Module):
    """Focal weighting that is harsher on easy negatives, plus a probability margin for them.

    Intentonomy images have one or two of 28 intents, so negatives dominate; `gamma_neg` and `clip`
    stop them from drowning the positives. With soft targets y in [0, 1] (the share of annotators
    who chose a class) each element's loss is the expected loss under that label distribution,
    `y * L_pos(p) + (1 - y) * L_neg(p)`, each term with its own focusing factor; for 0/1 targets
    this is the usual asymmetric loss. The focal weights are constants in the backward pass, as
    in the reference implementation. `reduction` is over all elements (the official code sums),
    and `weight` multiplies the result (the official code's `--loss_w`).
    """

    def __init__(
        self,
        gamma_neg: float = 2.0,
        gamma_pos: float = 1.0,
        clip: float = 0.05,
        eps: float = 1e-8,
        reduction: Reduction = "mean",
        weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.gamma_neg = gamma_neg
        self.gamma_pos = gamma_pos
        self.clip = clip
        self.eps = eps
        self.reduction = reduction
        self.weight = weight

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if logits.shape != targets.shape:
            raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)}")
        targets = targets.float()
        prob_pos = torch.sigmoid(logits.float())
        prob_neg = (1 - prob_pos + self.clip).clamp(max=1) if self.clip > 0 else 1 - prob_pos
        with torch.no_grad():
            weight_pos = torch.pow(1 - prob_pos, self.gamma_pos)
            weight_neg = torch.pow(1 - prob_neg, self.gamma_neg)
        loss_pos = -torch.log(prob_pos.clamp(min=self.eps)) * weight_pos
        loss_neg = -torch.log(prob_neg.clamp(min=self.eps)) * weight_neg
        loss = targets * loss_pos + (1 - targets) * loss_neg
        reduced = loss.sum() if self.reduction == "sum" else loss.mean()
        return self.weight * reduced
