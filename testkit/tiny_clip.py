"""Tiny random open_clip CLIPs for tests, saved the way a pretrained checkpoint file would be.

`fixtures/clip/tiny-rn.json` (ModifiedResNet, 64 px) and `fixtures/clip/tiny-vit.json`
(VisionTransformer, 32 px, 8 px patches, 3 blocks) share a 32-wide joint space and a real
77-token text tower, so they serve image and text embedding tests alike.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import open_clip
import safetensors.torch
import torch

from pipeline.clip.loading import load_clip
from testkit.paths import FIXTURES as TEST_FIXTURES

FIXTURES = TEST_FIXTURES / "clip"
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


def save_calm_text_clip(config: Path, path: Path, seed: int, attention_gain: float) -> Path:
    """`save_random_clip` with the text attention's output scaled by `attention_gain`.

    In a pretrained CLIP a class's positive and negative prompts start close (cosine about
    0.98), so the official head's logits, 100 times a difference of pooled cosines, start in a
    range the loss can train. In a random tiny CLIP the 16 random contexts dominate each prompt
    through attention: the logits saturate and the loss gradient vanishes. A weak attention
    output keeps the contexts' effect small, as pretraining does, and still lets it train."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        module = load_clip(str(config), None).module
    with torch.no_grad():
        for block in module.transformer.resblocks:
            block.attn.out_proj.weight.mul_(attention_gain)
    safetensors.torch.save_file(module.state_dict(), path)
    return path


def random_class_embeddings(num_classes: int, seed: int) -> torch.Tensor:
    """Unit-norm stand-ins [num_classes, TINY_EMBED_DIM] for cached class text embeddings."""
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(num_classes, TINY_EMBED_DIM, generator=generator)
    return torch.nn.functional.normalize(embeddings, dim=-1)


def save_openai_clip(config: Path, path: Path, seed: int, torchscript: bool) -> torch.nn.Module:
    """A random QuickGELU CLIP saved the way OpenAI ships theirs: a TorchScript archive (or its
    state dict) with the `input_resolution`, `context_length` and `vocab_size` constants among
    the weights and most tensors in float16. Returns the float32 model it was made from."""
    settings = json.loads(config.read_text())
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = open_clip.CLIP(**settings, quick_gelu=True).eval()
    open_clip.model.convert_weights_to_fp16(model)
    reference = copy.deepcopy(model).float()
    del model.attn_mask  # open_clip's own buffer, absent from OpenAI's archives
    size = settings["vision_cfg"]["image_size"]
    constants = {"input_resolution": size, "context_length": 77, "vocab_size": 49408}
    for name, value in constants.items():
        if hasattr(model, name):
            delattr(model, name)
        model.register_buffer(name, torch.tensor(value))
    if torchscript:
        image = torch.zeros(1, 3, size, size, dtype=torch.float16)
        traced = torch.jit.trace_module(model, {"encode_image": (image,)}, check_trace=False)
        torch.jit.save(traced, str(path))
    else:
        torch.save(model.state_dict(), path)
    return reference
