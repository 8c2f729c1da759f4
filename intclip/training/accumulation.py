"""Gradient accumulation: which micro-batches form an optimiser step, and how each is weighted.

Each step's gradient is that of one batch of `batch_size * k` images: every micro-batch's loss
is weighted by its share of the step's images under `reduction: mean` (1/k for full micro-
batches), and added as it is under `sum`. An epoch's last step takes the micro-batches left
(fewer than k when k does not divide them): steps never span two epochs, so an epoch is whole
in `last.pt` and `--resume` stays exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from intclip.training.loss import Reduction


@dataclass(frozen=True)
class AccumulationPlan:
    samples: int  # images per epoch on this process
    batch_size: int
    k: int
    reduction: Reduction

    @property
    def micro_batches(self) -> int:
        return math.ceil(self.samples / self.batch_size)

    @property
    def steps(self) -> int:
        """Optimiser steps per epoch."""
        return math.ceil(self.micro_batches / self.k)

    def ends_step(self, micro: int) -> bool:
        """Whether micro-batch `micro` (0-based in the epoch) is the last of its step."""
        return (micro + 1) % self.k == 0 or micro + 1 == self.micro_batches

    def weight(self, micro: int, images: int) -> float:
        """The factor of micro-batch `micro`'s loss, which holds `images` images."""
        if self.reduction == "sum":
            return 1.0
        first = micro - micro % self.k
        step_images = min(self.k * self.batch_size, self.samples - first * self.batch_size)
        return images / step_images
