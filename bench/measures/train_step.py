"""7. Training images/s with torch.compile and channels-last vs neither (eager, contiguous)."""

from __future__ import annotations

from pathlib import Path

import torch

from bench.registry import Comparison, Settings, Side, measure
from bench.workload import TINY_RN, random_intclip, timed, training_step
from intclip.runtime.acceleration import compiled, to_channels_last
from intclip.training.config import OptimConfig


def _rate(settings: Settings, optim: OptimConfig, device: torch.device) -> float:
    torch.manual_seed(0)
    model, clip = random_intclip(settings["model"], device)
    memory_format = (
        torch.channels_last
        if to_channels_last(model, clip.module.visual, optim.channels_last)
        else torch.contiguous_format
    )
    parameters = [p for group in model.parameter_groups() for p in group.parameters]
    step = training_step(compiled(model, optim.compile), parameters, device)
    size = settings["size"]
    images = torch.randn(settings["batch_size"], 3, size, size, device=device)
    images = images.contiguous(memory_format=memory_format)
    for _ in range(settings["warmup"]):  # compilation happens here
        step(images)
    seconds = timed(lambda: [step(images) for _ in range(settings["steps"])], device)
    return settings["batch_size"] * settings["steps"] / seconds


@measure(
    "train_step",
    "Training images/s, compile + channels-last vs eager",
    defaults={"model": "RN50", "batch_size": 8, "size": 224, "steps": 3, "warmup": 2},
    quick={
        "batch_size": 2,
        "size": 64,
        "steps": 1,
        "warmup": 1,
        "model": str(TINY_RN),
    },
    order=7,
)
def run(settings: Settings) -> list[Comparison]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    fast = OptimConfig(compile=True, channels_last=True)
    plain = OptimConfig(compile=False, channels_last=False)
    return [
        Comparison(
            f"{Path(settings['model']).stem}, batch {settings['batch_size']}, {device.type}",
            Side("compile + channels-last", _rate(settings, fast, device), "images/s"),
            Side("eager", _rate(settings, plain, device), "images/s"),
            note="report only, no target on CPU; compilation time excluded (warm-up steps)",
        )
    ]
