"""8. Training step time with learned prompts (`model.text: prompts`) vs cached class embeddings.

`prompts` runs CLIP's frozen text tower forward and backward on 2 x classes x descriptions prompts
at every step (positive and negative contexts), where `cached` scores against a fixed tensor; the
ratio is what the official recipe's text side costs on the same image model and batch.
"""

from __future__ import annotations

from pathlib import Path

import torch

from bench.registry import Comparison, Settings, Side, measure
from bench.workload import ROOT, TINY_RN, timed, training_step
from intclip.model.class_text import plain_class_embeddings
from intclip.model.intclip import IntCLIP, ModelConfig
from intclip.model.prompts import PromptConfig, read_class_texts
from pipeline.clip.loading import LoadedClip, load_clip

DESCRIPTIONS = ROOT / "prompts" / "intentonomy.descriptions.json"


def _seconds_per_step(model: IntCLIP, settings: Settings, device: torch.device) -> float:
    parameters = [p for group in model.parameter_groups() for p in group.parameters]
    step = training_step(model, parameters, device)
    size = settings["size"]
    images = torch.randn(settings["batch_size"], 3, size, size, device=device)
    for _ in range(settings["warmup"]):
        step(images)
    return (
        timed(lambda: [step(images) for _ in range(settings["steps"])], device) / settings["steps"]
    )


def _models(
    settings: Settings, clip: LoadedClip
) -> tuple[IntCLIP, IntCLIP, int]:  # (prompts, cached, prompt count)
    texts = read_class_texts(DESCRIPTIONS, settings["class_text"])
    prompts_config = ModelConfig(
        text="prompts",
        prompts=PromptConfig(n_ctx=settings["n_ctx"], class_text=settings["class_text"]),
    )
    torch.manual_seed(0)
    prompts = IntCLIP(clip, texts, prompts_config)
    with torch.no_grad():
        embeddings = plain_class_embeddings(clip, texts)
    torch.manual_seed(0)
    cached = IntCLIP(clip, embeddings, ModelConfig())
    return prompts, cached, 2 * sum(len(entry.texts) for entry in texts.classes)


@measure(
    "prompts_step",
    "Training step, text: prompts vs text: cached",
    defaults={
        "model": "RN50",
        "batch_size": 8,
        "size": 224,
        "n_ctx": 16,
        "class_text": "descriptions",
        "steps": 3,
        "warmup": 1,
    },
    quick={"model": str(TINY_RN), "batch_size": 2, "size": 64, "steps": 1, "warmup": 1},
    order=8,
)
def run(settings: Settings) -> list[Comparison]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    clip = load_clip(settings["model"], None, device)
    prompts, cached, count = _models(settings, clip)
    return [
        Comparison(
            f"random {Path(settings['model']).stem}, batch {settings['batch_size']}, "
            f"{count} prompts of {settings['n_ctx']} contexts, {device.type}",
            Side("prompts", _seconds_per_step(prompts, settings, device), "s/step"),
            Side("cached", _seconds_per_step(cached, settings, device), "s/step"),
            note="report only: the price of the official text side (ratio > 1 is slower)",
        )
    ]
