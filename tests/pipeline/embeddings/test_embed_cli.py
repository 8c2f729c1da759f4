"""`intclip-prompts embed`, `cache ls`, `cache verify` and `zeroshot` through the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch
from PIL import Image

from pipeline.common.errors import UserError
from pipeline.descriptions.format import write_descriptions
from pipeline.embeddings.cache import load_class_embeddings
from testkit.descriptions import descriptions_document
from testkit.disk import snapshot
from testkit.tiny_clip import TINY_CLIP_CONFIGS, save_random_clip

VIT = TINY_CLIP_CONFIGS["vit"]
TEXTS = {
    "calm": ["A lake lies still at dawn.", "A hammock sways between two palms."],
    "thrill": ["A climber hangs from a cliff.", "A surfer rides a huge wave."],
    "kinship": ["A family shares a long dinner.", "Two brothers hug at a station."],
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


def embedded(prompts_cli, setup, *args: object, cache: Path | None = None) -> Path:
    """The cache file a successful `embed` printed last."""
    code, out, err = embed(prompts_cli, setup, *args, cache=cache)
    assert code == 0, err
    return Path(out.strip().splitlines()[-1])


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
    paths = [embedded(prompts_cli, setup, cache=tmp_path / name) for name in ("first", "second")]
    first, second = (safetensors.torch.load_file(p) for p in paths)
    assert first.keys() == second.keys() == {"class_embeddings", "description_embeddings"}
    for name in first:
        assert torch.equal(first[name], second[name])
    assert paths[0].name == paths[1].name


def test_every_input_changes_the_key(prompts_cli, setup, tmp_path):
    base = embedded(prompts_cli, setup)
    name_too = embedded(prompts_cli, setup, "--aggregate", "mean+name")
    changed = dict(TEXTS, kinship=["A family shares a short lunch.", *TEXTS["kinship"][1:]])
    descriptions_file(setup["descriptions"], changed)
    edited = embedded(prompts_cli, setup)
    other_weights = save_random_clip(VIT, tmp_path / "other.safetensors", seed=1)
    other = embedded(prompts_cli, dict(setup, weights=other_weights))
    assert len({base, name_too, edited, other}) == 4
    mean = load_class_embeddings(base).class_embeddings
    assert not torch.allclose(mean, load_class_embeddings(name_too).class_embeddings)
    assert not torch.allclose(mean, load_class_embeddings(edited).class_embeddings)


def test_a_damaged_cache_file_is_said_and_computed_again(prompts_cli, setup):
    path = embedded(prompts_cli, setup)
    intact = load_class_embeddings(path)
    path.write_bytes(path.read_bytes()[:-100])
    code, out, err = embed(prompts_cli, setup)
    assert code == 0 and out.strip().splitlines()[-1] == str(path)
    assert "damaged or not a safetensors file" in err and "embedded 3 classes" in err
    again = load_class_embeddings(path)
    assert torch.equal(again.class_embeddings, intact.class_embeddings)
    assert again.metadata == intact.metadata


def test_too_long_description_is_one_line_naming_file_class_and_text(prompts_cli, setup):
    """The rules `build --check` applies are applied again: the file may be edited by hand."""
    long_text = " ".join(["word"] * 80)
    descriptions_file(setup["descriptions"], dict(TEXTS, thrill=[long_text, "A dog runs."]))
    code, _, err = embed(prompts_cli, setup)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(
        f"error: {setup['descriptions']}: class 1 'thrill': description 1: has 80 words, "
        "needs 1 to 25: 'word word"
    )
    assert err.endswith("(and 1 more); fix it or run intclip-prompts build again\n")
    assert not setup["cache"].exists()


def test_an_empty_class_list_is_one_line(prompts_cli, setup):
    descriptions_file(setup["descriptions"], {})
    code, out, err = embed(prompts_cli, setup)
    assert (code, out) == (2, "")
    assert err == f"error: {setup['descriptions']}: no classes to embed\n"


def test_two_classes_of_one_id_are_refused_before_embedding(prompts_cli, setup, tmp_path):
    path = setup["descriptions"]
    path.write_text(path.read_text().replace('"id": "thrill"', '"id": "calm"'))
    before = snapshot(tmp_path)
    code, out, err = embed(prompts_cli, setup)
    assert (code, out) == (2, "")
    assert err == (
        f"error: {path}: classes: Value error, class id 'calm' is given to labels 0 and 1; "
        "each class id once\n"
    )
    assert snapshot(tmp_path) == before


def test_missing_descriptions_file_is_one_line(prompts_cli, setup, tmp_path):
    code, _, err = embed(prompts_cli, dict(setup, descriptions=tmp_path / "absent.json"))
    assert code == 2 and err == f"error: {tmp_path / 'absent.json'}: descriptions file not found\n"


def test_cache_ls_lists_provenance(prompts_cli, setup):
    code, out, _ = prompts_cli("cache", "ls", "--cache-dir", setup["cache"])
    assert code == 0 and "no cached embeddings" in out
    path = embedded(prompts_cli, setup)
    embedded(prompts_cli, setup, "--aggregate", "mean+name")
    code, out, _ = prompts_cli("cache", "ls", "--cache-dir", setup["cache"])
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith("2 cached embedding file(s)")
    listed = next(line for line in lines if line.startswith(path.name))
    assert "descriptions=toy.descriptions.json@" in listed and f"model={VIT}" in listed
    assert "aggregate=mean " in listed and "NxKxD=3x2x32" in listed and "KiB" in listed


def test_cache_verify_good_tampered_and_changed_sources(prompts_cli, setup):
    path = embedded(prompts_cli, setup)
    code, out, _ = prompts_cli("cache", "verify", path, "--device", "cpu")
    assert code == 0 and "verified" in out

    tensors = safetensors.torch.load_file(path)
    with safetensors.safe_open(path, framework="pt") as reader:
        header = reader.metadata()
    tensors["class_embeddings"] = tensors["class_embeddings"].flip(0).contiguous()
    safetensors.torch.save_file(tensors, path, metadata=header)
    code, _, err = prompts_cli("cache", "verify", path, "--device", "cpu")
    assert code == 1 and "differs from a recomputation" in err

    descriptions_file(setup["descriptions"], dict(TEXTS, calm=["A calm sea.", "A lake yawns."]))
    code, _, err = prompts_cli("cache", "verify", path, "--device", "cpu")
    assert code == 2 and "gone or changed since" in err


def test_cache_verify_refuses_changed_weights(prompts_cli, setup, tmp_path):
    weights = save_random_clip(VIT, tmp_path / "mine.safetensors", seed=3)
    path = embedded(prompts_cli, dict(setup, weights=weights))
    save_random_clip(VIT, weights, seed=4)
    code, _, err = prompts_cli("cache", "verify", path, "--device", "cpu")
    assert code == 2 and "is not the one recorded (weights sha256" in err


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_file_under_another_key_is_never_served(prompts_cli, setup):
    """A cache file copied or renamed to another key's name: `embed` recomputes it."""
    mean = embedded(prompts_cli, setup)
    with_name = embedded(prompts_cli, setup, "--aggregate", "mean+name")
    with_name.write_bytes(mean.read_bytes())
    code, out, err = embed(prompts_cli, setup, "--aggregate", "mean+name")
    assert code == 0 and out.strip().splitlines()[-1] == str(with_name)
    assert "not made from the inputs asked for: aggregate is 'mean' in the header" in err
    assert "embedded 3 classes" in err
    assert load_class_embeddings(with_name).metadata.aggregate == "mean+name"


def test_training_refuses_a_file_whose_header_records_other_inputs(prompts_cli, setup):
    from pipeline.embeddings.cache import embedding_cache_key

    mean = embedded(prompts_cli, setup)
    key = embedding_cache_key(setup["descriptions"], VIT, setup["weights"], "mean+name")
    with pytest.raises(UserError, match=r"not made from the inputs asked for: aggregate is 'mean'"):
        load_class_embeddings(mean, key=key)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        ({"aggregate": "mean+name"}, "its name is not the key of its inputs"),
        ({"descriptions_sha256": "0" * 64}, "gone or changed since"),
        ({"ids": '["calm", "thrill", "joy"]'}, "its labels and ids are not those of"),
    ],
)
def test_cache_verify_checks_the_header_against_the_sources(prompts_cli, setup, edit, expected):
    path = embedded(prompts_cli, setup)
    tensors = safetensors.torch.load_file(path)
    with safetensors.safe_open(path, framework="pt") as reader:
        header = reader.metadata()
    safetensors.torch.save_file(tensors, path, metadata={**header, **edit})
    before = _snapshot(setup["cache"])
    code, out, err = prompts_cli("cache", "verify", path, "--device", "cpu")
    assert code in (1, 2) and out == "" and err.count("\n") == 1
    assert err.startswith(f"error: {path}: ") and expected in err
    assert _snapshot(setup["cache"]) == before


@pytest.fixture
def images(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for name, colour in (("red.png", (255, 0, 0)), ("blue.png", (0, 0, 255))):
        Image.new("RGB", (40, 30), colour).save(folder / name)
    return folder


def test_zeroshot_prints_top_intents(prompts_cli, setup, images):
    path = embedded(prompts_cli, setup)
    code, out, err = prompts_cli(
        "zeroshot", "--embeddings", path, "--images", images / "red.png", images / "blue.png",
        "--top", "2", "--device", "cpu",
    )  # fmt: skip
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 6 and lines[0].endswith("red.png") and lines[3].endswith("blue.png")
    for block in (lines[1:3], lines[4:6]):
        scores = [float(line.split()[0]) for line in block]
        assert scores == sorted(scores, reverse=True) and all(0 < s <= 1 for s in scores)
        assert all(line.split()[2] in TEXTS for line in block)
    code, out, _ = prompts_cli(
        "zeroshot", "--embeddings", path, "--images", images, "--top", "3", "--device", "cpu"
    )
    rows = [line.split() for line in out.splitlines() if line.startswith("  ")]
    assert code == 0 and out.splitlines()[0].endswith("blue.png") and len(rows) == 6
    for image in (rows[:3], rows[3:]):
        assert sorted(row[2] for row in image) == sorted(TEXTS)
        assert sum(float(row[0]) for row in image) == pytest.approx(1, abs=2e-3)  # softmax


def test_zeroshot_refuses_another_clip_and_missing_images(prompts_cli, setup, images, tmp_path):
    path = embedded(prompts_cli, setup)
    other = save_random_clip(VIT, tmp_path / "other.safetensors", seed=5)
    code, _, err = prompts_cli(
        "zeroshot", "--embeddings", path, "--images", images,
        "--pretrained", other, "--device", "cpu",
    )  # fmt: skip
    assert code == 2 and "was made with another CLIP: weights sha256" in err
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


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_embed_verify_and_zeroshot_on_cuda(prompts_cli, setup, images):
    path = embedded(prompts_cli, setup, "--device", "cuda")
    code, out, err = prompts_cli("cache", "verify", path, "--device", "cpu")
    assert code == 0 and "verified" in out, err
    code, out, err = prompts_cli(
        "zeroshot", "--embeddings", path, "--images", images, "--device", "cuda"
    )
    assert code == 0 and out.splitlines()[0].endswith("blue.png"), err
