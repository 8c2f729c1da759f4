"""Training-step speed-ups that change no result: memory format, compilation, fused optimisers."""

from __future__ import annotations

import torch
from open_clip.modified_resnet import ModifiedResNet
from torch import nn

FUSED_OPTIMIZER_DEVICES = frozenset({"cpu", "cuda"})  # where torch has fused SGD and AdamW


def to_channels_last(model: nn.Module, visual: nn.Module, enabled: bool) -> bool:
    """Convert `model` to channels-last when `enabled` and its tower (`visual`) is a ResNet,
    whose convolutions gain from it; ViTs do not. Whether the inputs should follow."""
    if not (enabled and isinstance(visual, ModifiedResNet)):
        return False
    model.to(memory_format=torch.channels_last)
    return True


def compiled(module: nn.Module, enabled: bool) -> nn.Module:
    """`torch.compile(module)` when `enabled` (`optim.compile`); the module itself otherwise."""
    return torch.compile(module) if enabled else module


def fused_optimizer(device: torch.device, loss_scaled: bool = False) -> dict[str, bool]:
    """Optimiser keyword arguments: one fused kernel per step where torch has one.

    Not on the CPU under a GradScaler (fp16): torch's fused CPU SGD writes garbage (1e29) into
    the weights on the first step the scaler lets through after skipping one."""
    if device.type not in FUSED_OPTIMIZER_DEVICES or (loss_scaled and device.type == "cpu"):
        return {}
    return {"fused": True}
