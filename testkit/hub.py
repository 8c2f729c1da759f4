"""An offline stand-in for CLIP's pretrained weights: a Hugging Face cache holding what
`hf_hub_download` would leave for a tag, with random weights of the real architecture in it.

Pretrained weights cannot be downloaded on these machines; with `HF_HOME` pointing at this cache
and `HF_HUB_OFFLINE=1`, `load_clip("RN101", "openai")` and `--clip RN101 --pretrained openai` run
as written.
"""

from __future__ import annotations

from pathlib import Path

import safetensors.torch

from pipeline.clip.loading import load_clip

RN101_OPENAI = ("RN101-quickgelu", "timm/resnet101_clip.openai")
"""The architecture OpenAI's RN101 weights need, and the hub repository of its `openai` tag."""


def hub_cache_with_random_weights(home: Path, model: str, repo_id: str) -> Path:
    """`home` as `HF_HOME`, holding `repo_id`'s `open_clip_model.safetensors` made of random
    weights of `model`; returns `home`."""
    repo = home / "hub" / f"models--{repo_id.replace('/', '--')}"
    revision = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    clip = load_clip(model, None)
    state = {name: tensor.contiguous() for name, tensor in clip.module.state_dict().items()}
    safetensors.torch.save_file(state, snapshot / "open_clip_model.safetensors")
    return home
