"""1. Image pipeline images/s per core: the fast path vs the plain torchvision path."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from open_clip.constants import OPENAI_DATASET_MEAN as CLIP_MEAN
from open_clip.constants import OPENAI_DATASET_STD as CLIP_STD
from PIL import Image

from bench.registry import Comparison, Settings, Side, Target, measure
from bench.workload import write_jpegs
from intclip.config import AugmentConfig, DataConfig
from intclip.image_pipeline import ModelInput, build_image_pipeline


def _per_core_rate(paths: list[Path], transform, finish) -> float:
    """Images per CPU-second in this process, torch on one thread: a rate per core (after
    one untimed image, which pays for first-call set-up)."""
    with Image.open(paths[0]) as image:
        finish(transform(image)[None])
    started = time.process_time()
    batch = []
    for path in paths:
        with Image.open(path) as image:
            batch.append(transform(image))
    finish(torch.stack(batch))
    return len(paths) / (time.process_time() - started)


@measure(
    "image_pipeline",
    "Image pipeline images/s per core, fast vs plain torchvision",
    defaults={"images": 60, "size": 224, "seed": 0},
    quick={"images": 4},
    missed="DCT scaling cuts the inverse transforms, not the entropy decoding, which dominates "
    "once images are small: what is left per image is Huffman decoding of the whole file, one "
    "bicubic resize and RandAugment. 5x needs fewer bytes per image: a one-time `prepare` pass "
    "storing images with a short side of about 2x the crop size (decoding then touches several "
    "times fewer bytes, and the crop still never upsamples), or decoding on the GPU (nvjpeg via "
    "torchvision.io.decode_jpeg(device='cuda')), neither of which is implemented yet.",
    order=1,
)
def run(settings: Settings) -> list[Comparison]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory() as folder:
            paths = write_jpegs(Path(folder), settings["images"], settings["seed"])
            return _compare(paths, settings["size"])
    finally:
        torch.set_num_threads(threads)


def _data(pipeline: str) -> DataConfig:
    """The default data settings with this pipeline (the paths are never read)."""
    return DataConfig(image_root=".", train="train.json", val="val.json", pipeline=pipeline)


def _compare(paths: list[Path], size: int) -> list[Comparison]:
    augment = AugmentConfig()
    fast, plain = (
        build_image_pipeline(size, CLIP_MEAN, CLIP_STD, augment, _data(name))
        for name in ("fast", "torchvision")
    )
    on_cpu = ModelInput(torch.device("cpu"), CLIP_MEAN, CLIP_STD, normalize=True)
    unchanged = ModelInput(torch.device("cpu"), CLIP_MEAN, CLIP_STD, normalize=False)
    note = (
        "fast: draft decode + crop/resize of the small image + uint8, normalised afterwards on "
        "the CPU here (on the GPU in training); plain: full decode, RandomResizedCrop/Resize "
        "on the full image, ToTensor, Normalize"
    )
    comparisons = []
    for label, new, old in (
        ("train transform", fast.train, plain.train),
        ("eval transform", fast.eval, plain.eval),
    ):
        torch.manual_seed(0)
        new_rate = _per_core_rate(paths, new, on_cpu)
        torch.manual_seed(0)
        old_rate = _per_core_rate(paths, old, unchanged)
        comparisons.append(
            Comparison(
                label,
                Side("fast", new_rate, "images/s/core"),
                Side("torchvision", old_rate, "images/s/core"),
                Target(">=", 5.0),
                note,
            )
        )
    return comparisons
