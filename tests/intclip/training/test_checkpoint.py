"""IntCLIP checkpoints: trained tensors only, rebuilt on the same CLIP, refused on anything else."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import safetensors.torch
import torch

from intclip.model.intclip import IntCLIP, ModelConfig
from intclip.training.checkpoint import load_model, load_weights, read_checkpoint_header, save_model
from intclip.training.loss import AsymmetricLoss
from pipeline.clip.loading import LoadedClip, load_clip
from pipeline.common.errors import UserError
from testkit.tiny_clip import TINY_CLIP_CONFIGS, random_class_embeddings, save_random_clip

NUM_CLASSES = 5


def trained_model(clip: LoadedClip, config: ModelConfig) -> IntCLIP:
    """A model after two optimiser steps, so every trained tensor differs from its start."""
    model = IntCLIP(clip, random_class_embeddings(NUM_CLASSES, seed=2), config)
    optimizer = torch.optim.AdamW(
        [{"params": group.parameters} for group in model.parameter_groups()], lr=1e-2
    )
    targets = torch.eye(NUM_CLASSES)[:2]
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(2):
        optimizer.zero_grad()
        images = torch.randn(2, 3, *clip.image_size, generator=generator)
        AsymmetricLoss()(model(images), targets).backward()
        optimizer.step()
    return model.eval()


@pytest.fixture
def saved(tiny_clip: LoadedClip, tmp_path: Path) -> tuple[IntCLIP, Path]:
    model = trained_model(tiny_clip, ModelConfig(semantic_depth=1, head="both"))
    path = tmp_path / "model.safetensors"
    save_model(model, path)
    return model, path


def reload_clip(clip: LoadedClip, tiny_clip_files: dict) -> LoadedClip:
    """The same CLIP loaded afresh from its file, as a later process would."""
    tower = "vit" if hasattr(clip.module.visual, "patch_size") else "resnet"
    return load_clip(str(TINY_CLIP_CONFIGS[tower]), tiny_clip_files[tower])


def test_save_then_load_gives_identical_logits(
    saved: tuple[IntCLIP, Path], tiny_clip: LoadedClip, tiny_clip_files: dict
) -> None:
    model, path = saved
    images = torch.randn(3, 3, *tiny_clip.image_size)

    loaded = load_model(
        path, reload_clip(tiny_clip, tiny_clip_files), random_class_embeddings(NUM_CLASSES, seed=2)
    )

    assert loaded.config == model.config
    with torch.no_grad():
        assert torch.equal(loaded.eval()(images), model(images))
    assert loaded.aggregation.alpha.item() != 0.0


def test_checkpoint_holds_only_trained_tensors_and_a_readable_header(
    saved: tuple[IntCLIP, Path], tiny_clip: LoadedClip
) -> None:
    model, path = saved
    stored = safetensors.torch.load_file(path)
    header = read_checkpoint_header(path)

    assert set(stored) == set(model.trained_state_dict())
    assert {name.split(".")[0] for name in stored} == {"semantic", "aggregation", "head"}
    assert header.clip == tiny_clip.identity
    assert header.config == model.config
    assert header.num_classes == NUM_CLASSES
    assert not list(path.parent.glob(".*.tmp"))


def test_loading_onto_another_base_clip_fails_clearly(
    saved: tuple[IntCLIP, Path], tiny_clip: LoadedClip, tmp_path: Path
) -> None:
    _, path = saved
    tower = "vit" if hasattr(tiny_clip.module.visual, "patch_size") else "resnet"
    other_file = save_random_clip(TINY_CLIP_CONFIGS[tower], tmp_path / "other.pt", seed=9)
    other = load_clip(str(TINY_CLIP_CONFIGS[tower]), other_file)

    with pytest.raises(UserError, match=r"was trained on another CLIP: weights sha256 \w+\.\.\."):
        load_model(path, other, random_class_embeddings(NUM_CLASSES, seed=2))


def test_loading_onto_another_architecture_names_both_models(
    saved: tuple[IntCLIP, Path], tiny_clip: LoadedClip, tiny_clip_files: dict
) -> None:
    _, path = saved
    other_tower = "resnet" if hasattr(tiny_clip.module.visual, "patch_size") else "vit"
    other = load_clip(str(TINY_CLIP_CONFIGS[other_tower]), tiny_clip_files[other_tower])

    with pytest.raises(UserError, match=r"another CLIP: model config-sha256:\w+ vs config-sha256"):
        load_model(path, other, random_class_embeddings(NUM_CLASSES, seed=2))


def test_other_class_embeddings_are_refused(
    saved: tuple[IntCLIP, Path], tiny_clip: LoadedClip
) -> None:
    _, path = saved
    with pytest.raises(UserError, match="trained for 5 classes; the class embeddings given have 6"):
        load_model(path, tiny_clip, random_class_embeddings(6, seed=2))
    with pytest.raises(UserError, match="trained with other class embeddings"):
        load_model(path, tiny_clip, random_class_embeddings(NUM_CLASSES, seed=3))


def test_load_weights_starts_another_config_from_them_and_refuses_other_classes(
    saved: tuple[IntCLIP, Path], tiny_clip: LoadedClip
) -> None:
    """`--init-from`: the trained tensors go into a model built from the new run's config."""
    model, path = saved
    settings = model.config.model_dump()
    config = ModelConfig.model_validate({**settings, "pooling_temperature": {"initial": 5.0}})
    started = IntCLIP(tiny_clip, random_class_embeddings(NUM_CLASSES, seed=2), config)
    load_weights(started, path)
    for name, tensor in model.trained_state_dict().items():
        assert torch.equal(started.trained_state_dict()[name], tensor), name

    with pytest.raises(UserError, match="trained for 5 classes; the class embeddings given have 6"):
        load_weights(IntCLIP(tiny_clip, random_class_embeddings(6, seed=2), config), path)
    deeper = ModelConfig.model_validate({**settings, "semantic_depth": 2})
    with pytest.raises(UserError, match="the semantic tensors do not fit this model"):
        load_weights(IntCLIP(tiny_clip, random_class_embeddings(NUM_CLASSES, seed=2), deeper), path)


def flip_a_tensor_byte(data: bytes) -> bytes:
    damaged = bytearray(data)
    damaged[-7] ^= 0xFF
    return bytes(damaged)


def cut_the_end(data: bytes) -> bytes:
    return data[:-64]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (flip_a_tensor_byte, "is corrupted: its tensors do not match their recorded checksum"),
        (cut_the_end, r"damaged or not a safetensors checkpoint .*not fully covered"),
    ],
)
def test_damaged_checkpoint_is_detected(
    saved: tuple[IntCLIP, Path], tiny_clip: LoadedClip, damage: Callable, message: str
) -> None:
    _, path = saved
    path.write_bytes(damage(path.read_bytes()))

    with pytest.raises(UserError, match=message):
        load_model(path, tiny_clip, random_class_embeddings(NUM_CLASSES, seed=2))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not a checkpoint at all", "damaged or not a safetensors checkpoint"),
        (b"", "damaged or not a safetensors checkpoint"),
    ],
)
def test_unreadable_file_is_refused(
    tmp_path: Path, tiny_clip: LoadedClip, content: bytes, message: str
) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        load_model(path, tiny_clip, random_class_embeddings(NUM_CLASSES, seed=2))


def test_foreign_safetensors_and_bad_headers_are_refused(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.safetensors"
    safetensors.torch.save_file({"weight": torch.zeros(2)}, foreign)
    with pytest.raises(UserError, match="not an IntCLIP checkpoint"):
        read_checkpoint_header(foreign)

    bad = tmp_path / "bad.safetensors"
    header = {"format": "intclip-model-v1", "config": {"head": "nowhere"}}
    safetensors.torch.save_file(
        {"w": torch.zeros(1)}, bad, metadata={"intclip": json.dumps(header)}
    )
    with pytest.raises(UserError, match=r"invalid checkpoint header \(config\.head: "):
        read_checkpoint_header(bad)

    with pytest.raises(UserError, match="checkpoint not found"):
        read_checkpoint_header(tmp_path / "absent.safetensors")
