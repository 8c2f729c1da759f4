"""6. Class text embeddings, batched vs one text at a time (`intclip-prompts embed`'s encoder)."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from bench.registry import Comparison, Settings, Side, Target, measure
from bench.workload import ROOT, TINY_RN
from pipeline.clip import load_clip
from pipeline.descriptions import read_descriptions
from pipeline.embeddings import compute_embeddings

DESCRIPTIONS = ROOT / "prompts" / "intentonomy.descriptions.json"


@measure(
    "text_embedding",
    "Text embedding batched vs one at a time",
    defaults={"model": "RN50", "batch_size": 64},
    quick={"model": str(TINY_RN)},
    missed="On a CPU a text transformer is compute-bound: a batch of 64 saves only the per-call "
    "overhead, which is small on an idle machine. An earlier run on a loaded machine measured "
    "13.7x (one text per call at 0.58 texts/s): the gap then was contention, not batching. On "
    "a GPU, where one text per call is mostly launch overhead, batching is what pays.",
    order=6,
)
def run(settings: Settings) -> list[Comparison]:
    document = read_descriptions(DESCRIPTIONS)
    clip = load_clip(settings["model"], None, torch.device("cpu"))
    texts = sum(len(c.descriptions) + 1 for c in document.classes)
    seconds = {}
    for batch_size in (settings["batch_size"], 1):
        started = time.perf_counter()
        compute_embeddings(document, clip, "mean+name", batch_size=batch_size)
        seconds[batch_size] = time.perf_counter() - started
    return [
        Comparison(
            f"{texts} texts, random {Path(settings['model']).stem}",
            Side(
                f"batch {settings['batch_size']}",
                texts / seconds[settings["batch_size"]],
                "texts/s",
            ),
            Side("batch 1", texts / seconds[1], "texts/s"),
            Target(">=", 5.0),
        )
    ]
