"""The embedding cache through its Python API: computing, writing, and the one checked loader."""

from __future__ import annotations

from pathlib import Path

import open_clip
import pytest
import safetensors
import safetensors.torch
import torch

from pipeline.clip.loading import LoadedClip, load_clip
from pipeline.common.errors import UserError
from pipeline.common.files import sha256_json
from pipeline.descriptions.format import write_descriptions
from pipeline.embeddings.cache import (
    CacheKey,
    compute_embeddings,
    embed_descriptions,
    load_class_embeddings,
)
from testkit.descriptions import descriptions_document
from testkit.tiny_clip import TINY_CLIP_CONFIGS, save_random_clip

VIT = str(TINY_CLIP_CONFIGS["vit"])
TEXTS = {
    "cats": ["A cat sleeps on a warm sofa.", "A kitten plays with wool."],
    "dogs": ["A dog runs on the beach.", "A puppy fetches a red ball."],
    "birds": ["A bird sings on a branch.", "Gulls circle over a harbour."],
}


@pytest.fixture(scope="module")
def vit_clip(tiny_clip_files: dict) -> LoadedClip:
    return load_clip(VIT, tiny_clip_files["vit"])


@pytest.fixture
def cache_path(tmp_path: Path, vit_clip: LoadedClip, tiny_clip_files: dict) -> Path:
    """A cache file written by `embed_descriptions` for TEXTS with the tiny ViT CLIP."""
    descriptions = tmp_path / "toy.descriptions.json"
    write_descriptions(descriptions, descriptions_document(TEXTS))
    weights = str(tiny_clip_files["vit"])
    return embed_descriptions(descriptions, vit_clip, VIT, weights, "mean", tmp_path / "c").path


def rewrite(
    source: Path, target: Path, tensors: dict | None = None, header: dict | None = None
) -> Path:
    """A copy of a cache file with some tensors or header entries replaced."""
    with safetensors.safe_open(source, framework="pt") as reader:
        original = reader.metadata()
    content = safetensors.torch.load_file(source) if tensors is None else tensors
    safetensors.torch.save_file(content, target, metadata=original if header is None else header)
    return target


def test_class_embeddings_are_unit_normalised_means_of_descriptions(tiny_clip):
    classes, descriptions = compute_embeddings(descriptions_document(TEXTS), tiny_clip, "mean")
    assert classes.shape == (3, 32) and descriptions.shape == (3, 2, 32)
    assert classes.dtype == descriptions.dtype == torch.float32
    assert torch.allclose(classes.norm(dim=-1), torch.ones(3), atol=1e-6)
    assert torch.allclose(descriptions.norm(dim=-1), torch.ones(3, 2), atol=1e-6)
    mean = torch.nn.functional.normalize(descriptions.mean(dim=1), dim=-1)
    assert torch.allclose(classes, mean, atol=1e-6)


def test_mean_plus_name_averages_in_the_fine_class_name(vit_clip):
    with_name, _ = compute_embeddings(descriptions_document(TEXTS), vit_clip, "mean+name")
    name_as_text = {name: [*texts, name.title()] for name, texts in TEXTS.items()}
    expected, _ = compute_embeddings(descriptions_document(name_as_text), vit_clip, "mean")
    plain, _ = compute_embeddings(descriptions_document(TEXTS), vit_clip, "mean")
    assert torch.allclose(with_name, expected, atol=1e-6)
    assert not torch.allclose(with_name, plain, atol=1e-3)


def test_batch_size_does_not_change_the_embeddings(vit_clip):
    one, _ = compute_embeddings(descriptions_document(TEXTS), vit_clip, "mean", batch_size=1)
    many, _ = compute_embeddings(descriptions_document(TEXTS), vit_clip, "mean", batch_size=64)
    assert torch.allclose(one, many, atol=1e-6)


def test_too_long_description_is_refused_naming_class_and_text(vit_clip):
    long_text = " ".join(["word"] * 80)
    document = descriptions_document(dict(TEXTS, dogs=[long_text, "A dog runs."]))
    with pytest.raises(UserError, match=r"class 1 'dogs': 82 tokens, CLIP's context holds 77"):
        compute_embeddings(document, vit_clip, "mean")


def test_classes_with_different_numbers_of_descriptions_are_refused(vit_clip):
    document = descriptions_document(dict(TEXTS, birds=["A bird sings on a branch."]))
    with pytest.raises(UserError, match="class 2 'birds' has 1 descriptions but class 0 'cats'"):
        compute_embeddings(document, vit_clip, "mean")
    with pytest.raises(UserError, match="no classes to embed"):
        compute_embeddings(descriptions_document({}), vit_clip, "mean")


def test_loader_accepts_the_matching_dataset_and_clip(cache_path, vit_clip):
    loaded = load_class_embeddings(cache_path, [0, 1, 2], list(TEXTS), clip=vit_clip.identity)
    assert loaded.labels == [0, 1, 2] and loaded.ids == list(TEXTS)
    assert loaded.metadata.descriptions_path.endswith("toy.descriptions.json")
    fresh, _ = compute_embeddings(descriptions_document(TEXTS), vit_clip, "mean")
    assert torch.equal(loaded.class_embeddings, fresh)


def test_loader_refuses_rows_in_another_order(cache_path):
    with pytest.raises(UserError, match=r"labels differ at row 0: the file has 0, the dataset"):
        load_class_embeddings(cache_path, expected_labels=[1, 0, 2])
    with pytest.raises(UserError, match=r"ids differ at row 1: the file has 'dogs'"):
        load_class_embeddings(cache_path, expected_ids=["cats", "wolves", "birds"])
    with pytest.raises(UserError, match="3 classes, the dataset has 4"):
        load_class_embeddings(cache_path, expected_labels=[0, 1, 2, 3])


def test_loader_refuses_another_clip(cache_path, tmp_path, tiny_clip_files):
    other_weights = load_clip(VIT, save_random_clip(Path(VIT), tmp_path / "o.pt", seed=2))
    with pytest.raises(UserError, match="was made with another CLIP: weights sha256"):
        load_class_embeddings(cache_path, clip=other_weights.identity)
    other_model = load_clip(str(TINY_CLIP_CONFIGS["resnet"]), tiny_clip_files["resnet"])
    with pytest.raises(UserError, match="was made with another CLIP: model config-sha256:"):
        load_class_embeddings(cache_path, clip=other_model.identity)


def test_loader_refuses_a_damaged_file(cache_path, tmp_path):
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(cache_path.read_bytes()[:-100])
    with pytest.raises(UserError, match=r"truncated\.safetensors: damaged or not a safetensors"):
        load_class_embeddings(truncated)
    with pytest.raises(UserError, match="no such embedding cache file"):
        load_class_embeddings(tmp_path / "absent.safetensors")


def test_loader_refuses_edited_tensors(cache_path, tmp_path):
    edited = tmp_path / "edited.safetensors"
    tensors = safetensors.torch.load_file(cache_path)
    tensors["class_embeddings"][1] *= 1.5
    with pytest.raises(UserError, match=r"row 1 of class_embeddings has norm 1\.5"):
        load_class_embeddings(rewrite(cache_path, edited, tensors))
    tensors = safetensors.torch.load_file(cache_path)
    tensors["description_embeddings"][2, 1, 0] = float("nan")
    with pytest.raises(UserError, match="description_embeddings must be finite float32"):
        load_class_embeddings(rewrite(cache_path, edited, tensors))
    del tensors["description_embeddings"]
    with pytest.raises(UserError, match="missing the description_embeddings tensor"):
        load_class_embeddings(rewrite(cache_path, edited, tensors))


def test_loader_refuses_an_edited_header(cache_path, tmp_path):
    with safetensors.safe_open(cache_path, framework="pt") as reader:
        header = reader.metadata()
    edited = tmp_path / "edited.safetensors"
    two_classes = {"labels": "[0, 1]", "ids": '["cats", "dogs"]'}
    rewrite(cache_path, edited, header={**header, **two_classes})
    with pytest.raises(UserError, match=r"class_embeddings has shape \(3, 32\) for 2 labels"):
        load_class_embeddings(edited)
    rewrite(cache_path, edited, header={**header, "ids": two_classes["ids"]})
    with pytest.raises(UserError, match="2 ids for 3 labels in the header"):
        load_class_embeddings(edited)
    rewrite(cache_path, edited, header={k: v for k, v in header.items() if k != "ids"})
    with pytest.raises(UserError, match="not an intclip embedding cache \\(header ids: Field"):
        load_class_embeddings(edited)


def test_the_activation_changes_the_key_only_where_the_old_loader_got_it_wrong(tmp_path):
    def key(model: str, pretrained: str, activation: str) -> str:
        return CacheKey("d" * 64, model, pretrained, activation, "mean", 3).path(tmp_path).stem

    def legacy_key(model: str, pretrained: str) -> str:
        return sha256_json(
            {
                "descriptions_sha256": "d" * 64,
                "model": model,
                "pretrained": pretrained,
                "aggregate": "mean",
                "open_clip": open_clip.__version__,
            }
        )

    assert key("RN101", "openai", "quick_gelu") == legacy_key("RN101", "openai")
    assert key("ViT-B-32", "file-sha256:ab", "gelu") == legacy_key("ViT-B-32", "file-sha256:ab")
    assert key("RN101", "file-sha256:ab", "quick_gelu") != legacy_key("RN101", "file-sha256:ab")


def test_the_header_must_record_the_keys_activation(cache_path, tmp_path):
    """A header that records no activation (written before it was recorded) stands for the one
    intclip built then; one that records another activation than the key's is refused."""
    meta = load_class_embeddings(cache_path).metadata
    assert meta.activation == "gelu"
    key = CacheKey(meta.descriptions_sha256, meta.model, meta.pretrained, "gelu", "mean", 3)
    assert key.path(tmp_path / "c") == cache_path
    assert load_class_embeddings(cache_path, key=key).metadata == meta
    with safetensors.safe_open(cache_path, framework="pt") as reader:
        header = reader.metadata()
    unrecorded = {k: v for k, v in header.items() if k != "activation"}
    older = rewrite(cache_path, tmp_path / "older.safetensors", header=unrecorded)
    assert load_class_embeddings(older, key=key).metadata.activation is None
    quick = CacheKey(meta.descriptions_sha256, meta.model, meta.pretrained, "quick_gelu", "mean", 3)
    for path in (cache_path, older):
        with pytest.raises(UserError, match="activation is 'gelu' in the header, 'quick_gelu'"):
            load_class_embeddings(path, key=quick)
