"""What the measures run on: generated Unsplash-sized JPEGs, a random IntCLIP, one training step.

Nothing here downloads anything: images are smooth random colour fields with grain (JPEG-sized
like photos, unlike pure noise), and CLIPs have random weights (speed does not depend on them).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from intclip.model.intclip import IntCLIP, ModelConfig
from intclip.training.loss import AsymmetricLoss
from pipeline.clip.loading import LoadedClip, load_clip

NUM_CLASSES = 28
ROOT = Path(__file__).resolve().parents[1]
TINY_RN = ROOT / "tests" / "fixtures" / "clip" / "tiny-rn.json"  # for --quick runs


def write_jpeg(path: Path, width: int, height: int, rng: np.random.Generator) -> Path:
    """A smooth random colour field with a little grain, as a quality-90 JPEG."""
    coarse = rng.integers(0, 256, (height // 32 + 2, width // 32 + 2, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC))
    grain = rng.integers(-3, 4, (height, width, 3))
    pixels = np.clip(smooth.astype(np.int16) + grain, 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=90)
    return path


def write_jpegs(
    folder: Path, count: int, seed: int = 0, sides: tuple[int, int] = (400, 1080)
) -> list[Path]:
    """`count` JPEGs with sides drawn from `sides` (default: 400-1080 px, Unsplash's small and
    regular sizes)."""
    rng = np.random.default_rng(seed)
    low, high = sides
    sizes = [tuple(int(v) for v in rng.integers(low, high + 1, size=2)) for _ in range(count)]
    return [write_jpeg(folder / f"{i:05d}.jpg", w, h, rng) for i, (w, h) in enumerate(sizes)]


def prompts_cli(*arguments: str) -> list[str]:
    """`intclip-prompts ARGUMENTS` from this checkout, in a fresh interpreter."""
    code = "import sys; from pipeline.cli.main import main; main(sys.argv[1:])"
    return [sys.executable, "-c", code, *arguments]


def random_intclip(name: str, device: torch.device) -> tuple[IntCLIP, LoadedClip]:
    """IntCLIP on a randomly initialised open_clip `name` (e.g. RN50), 28 random classes."""
    clip = load_clip(name, None, device)
    embeddings = torch.nn.functional.normalize(torch.randn(NUM_CLASSES, clip.embed_dim), dim=-1)
    return IntCLIP(clip, embeddings.to(device), ModelConfig()), clip


def training_step(
    model: torch.nn.Module, parameters: list[torch.nn.Parameter], device: torch.device
) -> Callable[[torch.Tensor], None]:
    """One SGD step on a batch (forward, asymmetric loss, backward, fused update), no sync."""
    optimizer = torch.optim.SGD(parameters, lr=1e-3, momentum=0.9, fused=True)
    criterion = AsymmetricLoss()

    def step(images: torch.Tensor) -> None:
        targets = torch.zeros(len(images), NUM_CLASSES, device=device)
        targets[:, 0] = 1
        loss = criterion(model(images).float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def timed(run: Callable[[], object], device: torch.device | None = None) -> float:
    """Wall-clock seconds of `run()`, waiting for the device at the end."""
    started = time.perf_counter()
    run()
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started
