"""`intclip-prompts embed`, the embedding cache and its loader, `cache ls/verify`, `zeroshot`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
from conftest import descriptions_document
from PIL import Image
from tiny_clip import TINY_CLIP_CONFIGS, save_random_clip

from pipeline.clip import load_clip
from pipeline.descriptions import write_descriptions
from pipeline.embeddings import load_class_embeddings
from pipeline.errors import UserError

VIT = TINY_CLIP_CONFIGS["vit"]
TEXTS = {
    "cats": ["A cat sleeps on a warm sofa.", "A kitten plays with wool."],
    "dogs": ["A dog runs on the beach.", "A puppy fetches a red ball."],
    "birds": ["A bird sings on a branch.", "Gulls circle over a harbour."],
}


def descriptions_file(path: Path, texts: dict[str, list[str]] = TEXTS) -> Path:
    write_descriptions(path, descriptions_document(texts))
    return path


@pytest.fixture
def setup(tmp_path, tiny_clip_files):
    return {
        "descriptions": descriptions_file(tmp_path / "toy.descriptions.json"),
        "weights": tiny_clip_files["vit"],
        "cache": tmp_path / "cache",
    }


def embed(prompts_cli, setup, *args: object, cache: Path | None = None):
    return prompts_cli(
        "embed", "--descriptions", setup["descriptions"], "--clip", VIT,
        "--pretrained", setup["weights"], "--device", "cpu",
        "--cache-dir", cache or setup["cache"], *args,
    )  # fmt: skip


def test_embed_writes_unit_norm_embeddings_and_reports_the_cache_hit(prompts_cli, setup):
    code, out, err = embed(prompts_cli, setup)
    assert code == 0, err
    path = Path(out.strip().splitlines()[-1])
    assert path.parent == setup["cache"] / "embeddings" and path.suffix == ".safetensors"
    assert "embedded 3 classes x 2 descriptions, 32 dimensions" in err
    loaded = load_class_embeddings(path, expected_labels=[0, 1, 2], expected_ids=list(TEXTS))
    assert loaded.class_embeddings.shape == (3, 32)
    assert loaded.description_embeddings.shape == (3, 2, 32)
    assert torch.allclose(loaded.class_embeddings.norm(dim=-1), torch.ones(3), atol=1e-6)
    code, again, err = embed(prompts_cli, setup)
    assert code == 0 and again.strip().splitlines()[-1] == str(path)
    assert "cache hit" in err and "embedded" not in err


def test_two_runs_are_bit_identical(prompts_cli, setup, tmp_path):
    paths = [
        Path(embed(prompts_cli, setup, cache=tmp_path / name)[1].strip().splitlines()[-1])
        for name in ("first", "second")
    ]
    first, second = (safetensors.torch.load_file(p) for p in paths)
    for name in first:
        assert torch.equal(first[name], second[name])
    assert paths[0].name == paths[1].name


def test_every_input_changes_the_key(prompts_cli, setup, tmp_path):
    base = embed(prompts_cli, setup)[1].strip()
    name_too = embed(prompts_cli, setup, "--aggregate", "mean+name")[1].strip()
    changed = dict(TEXTS, birds=["A bird sings on a high branch.", "Gulls circle over a harbour."])
    descriptions_file(setup["descriptions"], changed)
    edited = embed(prompts_cli, setup)[1].strip()
    other_weights = save_random_clip(VIT, tmp_path / "other.safetensors", seed=1)
    other = embed(prompts_cli, dict(setup, weights=other_weights))[1].strip()
    assert len({base, name_too, edited, other}) == 4
    mean = load_class_embeddings(Path(base)).class_embeddings
    with_name = load_class_embeddings(Path(name_too)).class_embeddings
    assert not torch.allclose(mean, with_name)


def test_too_long_description_is_refused_naming_class_and_text(prompts_cli, setup):
    long_text = " ".join(["word"] * 80)
    descriptions_file(setup["descriptions"], dict(TEXTS, dogs=[long_text, "A dog runs."]))
    code, _, err = embed(prompts_cli, setup)
    assert code == 2 and err.count("\n") == 1
    assert "class 1 'dogs': 82 tokens, CLIP's context holds 77: 'word word" in err


def test_loader_refuses_damage_order_and_another_clip(prompts_cli, setup, tmp_path):
    path = Path(embed(prompts_cli, setup)[1].strip())
    clip = load_clip(str(VIT), setup["weights"])
    assert load_class_embeddings(path, [0, 1, 2], clip=clip.identity).ids == list(TEXTS)

    with pytest.raises(UserError, match=r"labels differ at row 0: the cache has 0, the dataset"):
        load_class_embeddings(path, expected_labels=[1, 0, 2])
    with pytest.raises(UserError, match=r"ids differ at row 1: the cache has 'dogs'"):
        load_class_embeddings(path, expected_ids=["cats", "wolves", "birds"])
    with pytest.raises(UserError, match="3 classes, the dataset has 4"):
        load_class_embeddings(path, expected_labels=[0, 1, 2, 3])
    other = load_clip(str(VIT), save_random_clip(VIT, tmp_path / "o.safetensors", seed=2))
    with pytest.raises(UserError, match="was made with another CLIP: weights sha256"):
        load_class_embeddings(path, clip=other.identity)

    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(UserError, match="damaged or not a safetensors file"):
        load_class_embeddings(truncated)
    tensors = safetensors.torch.load_file(path)
    with safetensors.safe_open(path, framework="pt") as reader:
        header = reader.metadata()
    edited = tmp_path / "edited.safetensors"
    tensors["class_embeddings"][1] *= 1.5
    safetensors.torch.save_file(tensors, edited, metadata=header)
    with pytest.raises(UserError, match=r"row 1 of class_embeddings has norm 1\.5"):
        load_class_embeddings(edited)
    safetensors.torch.save_file(tensors, edited, metadata={**header, "labels": "[0, 1]"})
    with pytest.raises(UserError, match=r"class_embeddings has shape \(3, 32\) for 2 labels"):
        load_class_embeddings(edited)


def test_cache_ls_and_verify(prompts_cli, setup):
    path = Path(embed(prompts_cli, setup)[1].strip())
    code, out, _ = prompts_cli("cache", "ls", "--cache-dir", setup["cache"])
    assert code == 0 and "descriptions=toy.descriptions.json@" in out and "NxKxD=3x2x32" in out
    code, out, _ = prompts_cli("cache", "verify", path, "--device", "cpu")
    assert code == 0 and "verified" in out

    tensors = safetensors.torch.load_file(path)
    with safetensors.safe_open(path, framework="pt") as reader:
        header = reader.metadata()
    tensors["class_embeddings"] = tensors["class_embeddings"].flip(0).contiguous()
    safetensors.torch.save_file(tensors, path, metadata=header)
    code, _, err = prompts_cli("cache", "verify", path, "--device", "cpu")
    assert code == 1 and "differs from a recomputation" in err

    descriptions_file(setup["descriptions"], dict(TEXTS, cats=["A cat.", "A lion yawns."]))
    code, _, err = prompts_cli("cache", "verify", path, "--device", "cpu")
    assert code == 2 and "gone or changed since" in err


def test_zeroshot_prints_top_intents(prompts_cli, setup, tmp_path):
    path = Path(embed(prompts_cli, setup)[1].strip())
    folder = tmp_path / "images"
    folder.mkdir()
    for name, colour in (("red.png", (255, 0, 0)), ("blue.jpg", (0, 0, 255))):
        Image.new("RGB", (40, 30), colour).save(folder / name)
    code, out, err = prompts_cli(
        "zeroshot", "--embeddings", path, "--images", folder / "red.png", folder / "blue.jpg",
        "--top", "2", "--device", "cpu",
    )  # fmt: skip
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].endswith("red.png") and lines[3].endswith("blue.jpg")
    scores = [float(line.split()[0]) for line in lines if line.startswith("  ")]
    assert len(scores) == 4 and all(0 <= s <= 1 for s in scores)
    code, _, err = prompts_cli("zeroshot", "--embeddings", path, "--images", tmp_path / "none")
    assert code == 2 and "no such image or directory" in err


def test_unknown_model_and_unreachable_weights_are_one_line(prompts_cli, setup):
    code, _, err = prompts_cli(
        "embed", "--descriptions", setup["descriptions"], "--clip", "RN10l", "--device", "cpu"
    )
    assert code == 2 and "unknown open_clip model 'RN10l'; did you mean RN101" in err
    result = subprocess.run(
        [str(Path(sys.executable).parent / "intclip-prompts"), "embed", "--descriptions",
         str(setup["descriptions"]), "--clip", "RN50", "--device", "cpu",
         "--cache-dir", str(setup["cache"])],
        capture_output=True, text=True, check=False,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cannot download the RN50 'openai' weights" in errors[0]
    assert "--pretrained PATH" in errors[0]
