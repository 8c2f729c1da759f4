"""Tiny random open_clip CLIPs for tests, saved the way a pretrained checkpoint file would be.

`fixtures/clip/tiny-rn.json` (ModifiedResNet, 64 px) and `fixtures/clip/tiny-vit.json`
(VisionTransformer, 32 px, 8 px patches, 3 blocks) share a 32-wide joint space and a real
77-token text tower, so they serve image and text embedding tests alike.
"""

from __future__ import annotations

from pathlib import Path

import safetensors.torch
import torch

from pipeline.clip import load_clip

FIXTURES = Path(__file__).parent / "fixtures" / "clip"
TINY_CLIP_CONFIGS = {"resnet": FIXTURES / "tiny-rn.json", "vit": FIXTURES / "tiny-vit.json"}
TINY_EMBED_DIM = 32


def save_random_clip(config: Path, path: Path, seed: int) -> Path:
    """Random weights for `config` saved to `path` (.safetensors, else torch.save)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        state = load_clip(str(config), None).module.state_dict()
    if path.suffix == ".safetensors":
        safetensors.torch.save_file(state, path)
    else:
        torch.save(state, path)
    return path


def random_class_embeddings(num_classes: int, seed: int) -> torch.Tensor:
    """Unit-norm stand-ins [num_classes, TINY_EMBED_DIM] for cached class text embeddings."""
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(num_classes, TINY_EMBED_DIM, generator=generator)
    return torch.nn.functional.normalize(embeddings, dim=-1)
