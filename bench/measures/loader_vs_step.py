"""2. Does the loader keep up? Loader images/s with N workers vs training-step images/s of a
random RN50 IntCLIP at batch 32 (on CPU; on CUDA as well when there is a GPU)."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.registry import Comparison, Settings, Side, Target, measure
from bench.workload import NUM_CLASSES, TINY_RN, random_intclip, timed, training_step, write_jpegs
from intclip.data.dataset import ImageDataset, LabelIndex
from intclip.data.image_pipeline import FastTrain
from intclip.data.loader import LoaderOptions, train_loader
from intclip.runtime import distributed
from intclip.training.config import AugmentConfig


def _loader_rate(folder: Path, settings: Settings, workers: int, device: torch.device) -> float:
    """Images/s once the workers are up: from the first batch to the last."""
    paths = write_jpegs(folder, settings["images"])
    index = LabelIndex(
        folder,
        folder,
        tuple(p.name for p in paths),
        np.zeros((len(paths), NUM_CLASSES), dtype=np.float32),
        tuple(p.name for p in paths),
    )
    dataset = ImageDataset(index, FastTrain(settings["size"], AugmentConfig()))
    options = LoaderOptions(workers, prefetch_factor=4, pin_memory=device.type == "cuda")
    context = distributed.Context(0, 1, device)
    loader, seeds = train_loader(dataset, settings["batch_size"], 0, context, options)
    seeds.set_epoch(0)
    batches = iter(loader)
    next(batches)
    started, seen = time.perf_counter(), 0
    for batch in batches:
        seen += len(batch.targets)
    return seen / (time.perf_counter() - started)


def _step_rate(settings: Settings, device: torch.device) -> float:
    model, _ = random_intclip(settings["model"], device)
    parameters = [p for group in model.parameter_groups() for p in group.parameters]
    step = training_step(model, parameters, device)
    images = torch.randn(settings["batch_size"], 3, settings["size"], settings["size"])
    images = images.to(device)
    step(images[:2])  # warm-up, small: on a CPU one RN50 batch of 32 takes a minute
    seconds = timed(lambda: [step(images) for _ in range(settings["steps"])], device)
    return settings["batch_size"] * settings["steps"] / seconds


@measure(
    "loader_vs_step",
    "Loader throughput (N workers) vs training-step throughput",
    defaults={
        "images": 160,
        "batch_size": 32,
        "size": 224,
        "model": "RN50",
        "steps": 1,
        "workers": None,
    },
    quick={
        "images": 8,
        "batch_size": 2,
        "size": 64,
        "steps": 1,
        "workers": 1,
        "model": str(TINY_RN),
    },
    missed="The loader falls behind the step: give it more cores (data.num_workers), or "
    "decode on the GPU.",
    order=2,
)
def run(settings: Settings) -> list[Comparison]:
    workers = settings["workers"] or os.cpu_count() or 1
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    comparisons = []
    for device in devices:
        with tempfile.TemporaryDirectory() as folder:
            loader = _loader_rate(Path(folder), settings, workers, device)
        comparisons.append(
            Comparison(
                f"{device.type}, {workers} workers",
                Side("loader", loader, "images/s"),
                Side(
                    f"{Path(settings['model']).stem} step", _step_rate(settings, device), "images/s"
                ),
                Target(">=", 1.0),
                "ratio >= 1: the loader keeps up with the step; on CPU both share the cores",
            )
        )
    return comparisons
