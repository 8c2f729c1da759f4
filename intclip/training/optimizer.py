"""The optimiser and its schedule: one parameter group per trained part, warm-up then cosine,
and one step over accumulated micro-batches with fp16's loss scaling where it is on."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from intclip.model.trained import ParameterGroup
from intclip.runtime.acceleration import fused_optimizer
from intclip.training.config import OptimConfig


@dataclass
class Optimisation:
    """One optimiser step over accumulated micro-batches, with fp16's loss scaling if any."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler | None
    parameters: list[torch.Tensor]
    grad_clip: float | None

    def backward(self, loss: torch.Tensor) -> None:
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def step(self) -> None:
        if self.scaler is not None and self.grad_clip:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.parameters, self.grad_clip)
        if self.scaler is None:
            self.optimizer.step()
        else:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def learning_rates(self) -> dict[str, float]:
        return {group["name"]: group["lr"] for group in self.optimizer.param_groups}


def build_optimizer(
    config: OptimConfig,
    groups: list[ParameterGroup],
    device: torch.device,
    loss_scaled: bool = False,
) -> torch.optim.Optimizer:
    """One parameter group per role at `lr` times its multiplier; under `weight_decay_on:
    matrices` gains, biases and scalars go to a second group of that role without decay.
    `loss_scaled`: the steps go through fp16's GradScaler."""
    param_groups = []
    for group in groups:
        lr = config.lr * config.lr_multipliers.get(group.role, 1.0)
        if config.weight_decay_on == "all":
            split = [(group.role, group.parameters, config.weight_decay)]
        else:
            split = [
                (group.role, [p for p in group.parameters if p.ndim > 1], config.weight_decay),
                (f"{group.role}.no_decay", [p for p in group.parameters if p.ndim <= 1], 0.0),
            ]
        param_groups += [
            {"params": params, "weight_decay": decay, "name": name, "lr": lr}
            for name, params, decay in split
            if params
        ]
    fused = fused_optimizer(device, loss_scaled)
    if config.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=config.lr, momentum=config.momentum, **fused)
    return torch.optim.AdamW(param_groups, lr=config.lr, **fused)


def build_scheduler(
    config: OptimConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Warm-up, then cosine decay, per group; stepped every batch, changing as `schedule.unit`
    says. A constant warm-up holds every group at `warmup_lr`, whatever its multiplier."""
    schedule = config.schedule
    per_epoch = steps_per_epoch if schedule.unit == "step" else 1
    warmup = round(config.warmup_epochs * per_epoch)
    total = config.epochs * per_epoch
    if schedule.cosine_epochs is None:
        period = total - warmup
    elif schedule.cosine_epochs == "epochs":
        period = total
    else:
        period = round(schedule.cosine_epochs * per_epoch)

    def position(step: int) -> int:
        return step if schedule.unit == "step" else step // steps_per_epoch

    def factor_for(base_lr: float) -> Callable[[int], float]:
        def factor(step: int) -> float:
            at = position(step)
            if at < warmup:
                if schedule.warmup_lr is not None:
                    return schedule.warmup_lr / base_lr
                return (at + 1) / warmup
            progress = (at - warmup) / max(1, period)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

        return factor

    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, [factor_for(group["lr"]) for group in optimizer.param_groups]
    )
