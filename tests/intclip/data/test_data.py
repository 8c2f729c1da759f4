"""Data loading and the `intclip-train check-data` preflight."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from intclip.data.dataset import load_intentonomy, load_manifest
from intclip.data.synthetic import make_synthetic_intentonomy
from pipeline.common.errors import UserError
from testkit.paths import INTENTONOMY


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return make_synthetic_intentonomy(tmp_path_factory.mktemp("synthetic"), sizes=(12, 6, 5))


def test_train_softprob_binary_and_soft(synthetic):
    raw = json.loads(synthetic.train.read_text())
    soft = np.array([a["category_ids_softprob"] for a in raw["annotations"]], dtype=np.float32)
    binary = load_intentonomy(synthetic.train, synthetic.image_root, 4, "binary")
    assert np.array_equal(binary.targets, (soft > 0).astype(np.float32))
    kept = load_intentonomy(synthetic.train, synthetic.image_root, 4, "soft")
    assert np.allclose(kept.targets, soft)
    assert binary.paths[0] == raw["images"][0]["filename"] and not binary.problems


def test_val_ids_follow_annotation_order(synthetic):
    raw = json.loads(synthetic.val.read_text())
    index = load_intentonomy(synthetic.val, synthetic.image_root, 4)
    for row, annotation in enumerate(raw["annotations"]):
        assert np.flatnonzero(index.targets[row]).tolist() == annotation["category_ids"]


def test_real_val_annotations_match_the_label_vectors(tmp_path):
    """The official val labels, rebuilt in annotation order, equal the published label vectors."""
    vectors = np.load(INTENTONOMY / "val_label_vectors_intentonomy2020.npy")
    annotations = [
        {"id": row, "image_id": f"img{row}", "category_ids": np.flatnonzero(v).tolist()}
        for row, v in enumerate(vectors)
    ]
    images = [{"id": f"img{row}", "filename": f"low/img{row}.jpg"} for row in range(len(vectors))]
    path = tmp_path / "val.json"
    path.write_text(json.dumps({"images": images[::-1], "annotations": annotations}))
    index = load_intentonomy(path, tmp_path, 28)
    assert np.array_equal(index.targets, vectors.astype(np.float32))
    assert index.paths[3] == "low/img3.jpg"


def test_manifest_csv_and_jsonl(tmp_path):
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("image,labels\na.png,0;2\nb.png,1\n")
    jsonl_path = tmp_path / "m.jsonl"
    jsonl_path.write_text(
        '{"image": "a.png", "labels": [0, 2]}\n\n{"image": "b.png", "labels": [1]}\n'
    )
    for path in (csv_path, jsonl_path):
        index = load_manifest(path, tmp_path, 3)
        assert index.paths == ("a.png", "b.png")
        assert index.targets.tolist() == [[1, 0, 1], [0, 1, 0]]


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("m.csv", "path,labels\na.png,1\n", "m.csv:1: the header must name the columns"),
        ("m.csv", "image,labels\na.png,x\n", "m.csv:2: labels must be integer ids"),
        ("m.jsonl", '{"image": "a.png"}\n', "m.jsonl:1: expected"),
        ("m.txt", "", "must end in .csv or .jsonl"),
    ],
)
def test_manifest_errors_name_the_line(tmp_path, name, text, expected):
    from pipeline.common.errors import UserError

    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(UserError, match=expected):
        load_manifest(path, tmp_path, 3)


def write_config(tmp_path: Path, dataset, **data_overrides) -> Path:
    data = dataset.data_config(format="intentonomy", **data_overrides)
    config = {"data": data, "clip": {"name": "RN50", "embeddings": "unused.safetensors"}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_check_data_passes_on_clean_data(tmp_path, synthetic, train_cli):
    code, out, err = train_cli("check-data", "--config", str(write_config(tmp_path, synthetic)))
    assert code == 0, err
    assert "train: 12 entries, ok" in out and "test: 5 entries, ok" in out


def test_check_data_finds_every_failure_mode(tmp_path, train_cli):
    dataset = make_synthetic_intentonomy(tmp_path / "d", sizes=(10, 3, 3))
    low = dataset.image_root / "low"
    (low / "train00000.png").unlink()  # missing
    (low / "train00001.png").write_bytes(b"not an image at all")  # corrupt
    data = (low / "train00002.png").read_bytes()
    (low / "train00002.png").write_bytes(data[: len(data) // 2])  # truncated
    (low / "train00003.png").chmod(0)  # unreadable (skipped when running as root)
    outside = tmp_path / "outside.png"
    outside.write_bytes((low / "train00004.png").read_bytes())
    os.symlink(outside, low / "link.png")
    raw = json.loads(dataset.train.read_text())
    raw["images"][5]["filename"] = "../outside.png"
    raw["images"][6]["filename"] = str(outside)
    raw["images"][7]["filename"] = "low/link.png"
    raw["annotations"][8]["category_ids_softprob"] = [0.0] * 4  # no label
    raw["images"][9]["filename"] = raw["images"][4]["filename"]  # duplicate
    dataset.train.write_text(json.dumps(raw))
    val = json.loads(dataset.val.read_text())
    val["annotations"][0]["category_ids"] = [1, 7]  # out of range
    dataset.val.write_text(json.dumps(val))

    code, out, err = train_cli("check-data", "--config", str(write_config(tmp_path, dataset)))
    assert code == 2
    for kind in ("missing", "corrupt", "truncated", "no label", "duplicate", "label out of range"):
        assert f": {kind}: " in err, kind
    assert err.count("outside image root") == 3
    if os.geteuid() != 0:
        assert ": unreadable: " in err
    assert "annotations[8]: no label" in err and "annotations[9]: duplicate" in err
    assert "label 7 is not in 0..3" in err
    assert "val: 3 entries, 1 label out of range" in out
    assert err.strip().splitlines()[-1].startswith("error: ")
    assert "--skip-bad" in err


def test_check_data_without_decoding_misses_only_decode_problems(tmp_path, train_cli):
    dataset = make_synthetic_intentonomy(tmp_path / "d", sizes=(4, 2, 2))
    (dataset.image_root / "low" / "train00001.png").write_bytes(b"garbage")
    config = write_config(tmp_path, dataset)
    code, out, _ = train_cli("check-data", "--config", str(config), "--no-decode")
    assert code == 0 and "train: 4 entries, ok" in out
    code, _, err = train_cli("check-data", "--config", str(config))
    assert code == 2 and "corrupt" in err


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda c: c["data"].update(colour="red"), "data.colour: Extra inputs are not permitted"),
        (lambda c: c["clip"].pop("embeddings"), "give exactly one of descriptions"),
        (lambda c: c.update(optim={"lr": -1}), "optim.lr: Input should be greater than 0"),
    ],
)
def test_config_errors_name_the_key(tmp_path, synthetic, train_cli, mutate, expected):
    path = write_config(tmp_path, synthetic)
    config = yaml.safe_load(path.read_text())
    mutate(config)
    path.write_text(yaml.safe_dump(config))
    code, _, err = train_cli("check-data", "--config", str(path))
    assert code == 2 and expected in err and err.count("\n") == 1


def test_set_overrides_and_their_errors(tmp_path, synthetic, train_cli):
    config = write_config(tmp_path, synthetic)
    code, _, err = train_cli("check-data", "--config", str(config), "--set", "data.test=null")
    assert code == 0, err
    code, _, err = train_cli("check-data", "--config", str(config), "--set", "data.nope")
    assert code == 2 and "expected key=value" in err
    code, _, err = train_cli("check-data", "--config", str(tmp_path / "missing.yaml"))
    assert code == 2 and "config file not found" in err


def test_num_classes_defaults_to_the_taxonomys_class_count(tmp_path, synthetic):
    from intclip.training.config import load_config
    from testkit.paths import TOY_TAXONOMY

    taxonomy = tmp_path / "toy.yaml"
    taxonomy.write_text(TOY_TAXONOMY)
    config = write_config(tmp_path, synthetic, taxonomy=str(taxonomy))
    data = yaml.safe_load(config.read_text())
    del data["data"]["num_classes"]
    config.write_text(yaml.safe_dump(data))
    assert load_config(config).data.num_classes == 3  # the toy taxonomy's fine classes
    del data["data"]["taxonomy"]
    config.write_text(yaml.safe_dump(data))
    assert load_config(config).data.num_classes == 28  # no taxonomy: Intentonomy's
    data["data"]["taxonomy"] = str(tmp_path / "missing.yaml")
    config.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError, match=r"data\.num_classes is not set, so it is the class count"):
        load_config(config)


def test_check_data_compares_the_label_width_with_num_classes(tmp_path, train_cli):
    images = tmp_path / "images"
    images.mkdir()
    lines = ["image,labels"]
    for number in range(4):
        Image.new("RGB", (8, 8)).save(images / f"{number}.png")
        lines.append(f"{number}.png,{number}")
    manifest = tmp_path / "four.csv"
    manifest.write_text("\n".join(lines) + "\n")
    config = tmp_path / "config.yaml"
    data = {"format": "manifest", "image_root": str(images), "train": str(manifest),
            "val": str(manifest)}  # fmt: skip
    config.write_text(yaml.safe_dump({"data": data, "clip": {"embeddings": "e.safetensors"}}))
    code, _, err = train_cli("check-data", "--config", config)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: {manifest}: the annotations have 4 classes (the highest label")
    assert "but data.num_classes is 28; set data.num_classes, or data.taxonomy" in err
    config.write_text(yaml.safe_dump({"data": {**data, "num_classes": 4},
                                      "clip": {"embeddings": "e.safetensors"}}))  # fmt: skip
    code, out, err = train_cli("check-data", "--config", config)
    assert code == 0 and "train: 4 entries, ok" in out, err


def test_an_intentonomy_file_of_other_categories_is_refused_naming_the_key(tmp_path, synthetic):
    from intclip.data.dataset import load_intentonomy

    with pytest.raises(UserError) as refused:
        load_intentonomy(synthetic.train, synthetic.image_root, 28)
    assert str(refused.value) == (
        f"{synthetic.train}: the annotations have 4 classes (4 categories) but data.num_classes "
        "is 28; set data.num_classes, or data.taxonomy (whose class count is its default) to the "
        "dataset's taxonomy"
    )
