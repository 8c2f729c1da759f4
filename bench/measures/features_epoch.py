"""9. Frozen features: a training epoch on cached features vs through the image tower, and
computing the features vs one evaluation pass through the tower.

Both runs are `intclip-train run` itself (`train`, one epoch) on the same photo-sized JPEGs, the
same random CLIP, the same `mlp` head and config, one with `model.input: features` and one with
`model.input: images` (the frozen tower on every batch, fed by the fast loader); each side's
images/s is the epoch's own, as `metrics.csv` records it. Extraction (`ensure_features`) and the
evaluation pass read the same images through the same loader and tower.
"""

from __future__ import annotations

import csv
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import safetensors.torch
import torch

from bench.registry import Comparison, Settings, Side, Target, measure
from bench.workload import ROOT, TINY_RN, write_jpegs
from intclip.data.dataset import ImageDataset, load_split
from intclip.model.models import build_model
from intclip.runtime import distributed
from intclip.training.config import TrainConfig
from intclip.training.factory import build_components
from intclip.training.features import Extraction, ensure_features
from intclip.training.inputs import build_inputs
from intclip.training.loop import train
from intclip.training.scoring import predict_scores
from pipeline.clip.loading import load_clip
from pipeline.common.files import CACHE_DIR_ENV
from pipeline.embeddings.cache import embed_descriptions

DESCRIPTIONS = ROOT / "prompts" / "intentonomy.descriptions.json"
NUM_CLASSES = 28


@contextmanager
def _cache_in(folder: Path) -> Iterator[None]:
    """The cache root (features, decoded images) in `folder` while the block runs."""
    previous = os.environ.get(CACHE_DIR_ENV)
    os.environ[CACHE_DIR_ENV] = str(folder)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(CACHE_DIR_ENV, None)
        else:
            os.environ[CACHE_DIR_ENV] = previous


def _manifest(path: Path, images: list[Path], seed: int) -> Path:
    """A CSV manifest of `images` with one to three random labels each."""
    rng = np.random.default_rng(seed)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "labels"])
        for image in images:
            labels = rng.choice(NUM_CLASSES, size=int(rng.integers(1, 4)), replace=False)
            writer.writerow([image.name, ";".join(map(str, sorted(labels)))])
    return path


def _config(folder: Path, settings: Settings) -> TrainConfig:
    """A random CLIP saved as a weights file, its class embeddings, photo-sized JPEGs split
    into train and val manifests: a features config of the `mlp` head."""
    torch.manual_seed(0)
    weights = folder / "clip.safetensors"
    safetensors.torch.save_file(load_clip(settings["model"], None).module.state_dict(), weights)
    clip = load_clip(settings["model"], weights)
    embedded = embed_descriptions(
        DESCRIPTIONS, clip, settings["model"], str(weights), "mean", folder / "cache"
    )
    (folder / "images").mkdir()
    images = write_jpegs(folder / "images", settings["images"] + settings["val_images"])
    train_list = _manifest(folder / "train.csv", images[: settings["images"]], 0)
    val_list = _manifest(folder / "val.csv", images[settings["images"] :], 1)
    size = settings.get("size")
    return TrainConfig.model_validate(
        {
            "data": {
                "format": "manifest",
                "image_root": str(folder / "images"),
                "train": str(train_list),
                "val": str(val_list),
                "num_workers": settings["workers"],
            },
            "clip": {
                "name": settings["model"],
                "pretrained": str(weights),
                "embeddings": str(embedded.path),
                **({"image_size": size} if size else {}),
            },
            "model": {"input": "features", "head": "mlp"},
            "augment": {"enabled": False},
            "optim": {
                "epochs": 1,
                "batch_size": settings["batch_size"],
                "eval_batch_size": settings["batch_size"],
                "warmup_epochs": 0,
            },
            "device": "cpu",
            "output_dir": str(folder / "runs"),
        }
    )


def _epoch_rate(config: TrainConfig, name: str) -> float:
    """Images/s of the run's one training epoch, as its metrics.csv records it."""
    run_dir = train(config.model_copy(update={"run_name": name}), name)
    with (run_dir / "metrics.csv").open() as handle:
        return float(next(csv.DictReader(handle))["images_per_s"])


def _throughputs(config: TrainConfig, repeats: int, scratch: Path) -> tuple[float, float]:
    """(features computed, images scored by one eval pass through the tower) per second over
    the train images, each the best of `repeats`, the two taken in turn so that neither gets
    the warm caches or a quieter machine alone. Every extraction but the last writes to its own
    scratch cache root, so each computes every shard; the last fills the cache the run reads."""
    context = distributed.Context(0, 1, torch.device("cpu"))
    components = build_components(config, context.device)
    index = load_split(config.data, "train")
    images = config.model_copy(
        update={"model": config.model.model_copy(update={"input": "images"})}
    )
    inputs = build_inputs(images, components, context)
    model = build_model(components.clip, components.class_text, images.model)
    dataset = ImageDataset(index, components.image_pipeline(images).eval)
    extraction, evaluation = [], []
    for attempt in range(repeats):
        last = attempt == repeats - 1
        with nullcontext() if last else _cache_in(scratch / f"extraction-{attempt}"):
            started = time.perf_counter()
            ensure_features(config, components, index, "pooled", context, Extraction(log=print))
            extraction.append(time.perf_counter() - started)
        started = time.perf_counter()
        predict_scores(
            model, dataset, config.optim.eval_batch_size, context, inputs.model_input,
            options=inputs.options,
        )  # fmt: skip
        evaluation.append(time.perf_counter() - started)
    return len(index) / min(extraction), len(index) / min(evaluation)


@measure(
    "features_epoch",
    "Training epoch on cached features vs through the image tower; feature extraction vs one "
    "eval pass",
    defaults={
        "model": "RN50",
        "images": 96,
        "val_images": 16,
        "batch_size": 16,
        "workers": None,
        "size": None,
        "repeats": 3,
    },
    quick={
        "model": str(TINY_RN),
        "images": 24,
        "val_images": 8,
        "batch_size": 8,
        "size": 64,
        "repeats": 1,
    },
    missed="Extraction runs the same loader and tower as an eval pass and writes each shard "
    "once: a gap beyond noise means the shard writing or the merge costs more than the tower.",
    order=9,
)
def run(settings: Settings) -> list[Comparison]:
    name = Path(settings["model"]).stem
    with tempfile.TemporaryDirectory() as temporary, _cache_in(Path(temporary) / "cache"):
        config = _config(Path(temporary), settings)
        extraction, eval_pass = _throughputs(config, settings["repeats"], Path(temporary))
        features = _epoch_rate(config, "features")
        images_input = config.model.model_copy(update={"input": "images"})
        images = _epoch_rate(config.model_copy(update={"model": images_input}), "images")
    workers = config.data.num_workers or os.cpu_count() or 1
    return [
        Comparison(
            f"one epoch, random {name}, mlp head, {settings['images']} images, cpu",
            Side("cached features", features, "images/s"),
            Side(f"images through the tower, {workers} workers", images, "images/s"),
            Target(">=", 50.0),
            "both are `intclip-train run` epochs of the same config but model.input; the val "
            "pass and the one-off extraction are not in either epoch",
        ),
        Comparison(
            f"features of {settings['images']} images, random {name}, cpu",
            Side("intclip-train features", extraction, "images/s"),
            Side("one eval pass through the tower", eval_pass, "images/s"),
            Target(">=", 0.9),
            "the same images, loader and tower; extraction also writes its shards and merges "
            f"them (target: not slower than an eval pass, within 10% for noise); best of "
            f"{settings['repeats']} each, taken in turn",
        ),
    ]
