"""Data errors that `check-data` used to pass (exit 0) and `run` then died on: each is now
refused in one line naming the file, the entry and the split, with nothing changed on disk.
Files that are no images (a FIFO, a 20-megapixel strip) are entries `check-data` reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from intclip.data.synthetic import make_synthetic_intentonomy
from testkit.disk import assert_refused, fifo, snapshot


@pytest.fixture
def dataset(tmp_path):
    """A small generated dataset, a check-data config for it and the disk as it was."""
    data = make_synthetic_intentonomy(tmp_path / "d", sizes=(4, 3, 2), image_size=16)
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump({"data": data.data_config(), "clip": {"embeddings": "e.safetensors"}})
    )
    return data, config


def rewrite(path: Path, change) -> None:
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document, indent=1))


def check_data(train_cli, config: Path):
    return train_cli("check-data", "--config", config)


def _soft(value):
    return lambda d: d["annotations"][3]["category_ids_softprob"].__setitem__(0, value)


def _emptied(d):
    d.update(images=[], annotations=[])


SOFT = "annotations[3]: category_ids_softprob must be 4 numbers in [0, 1]"
DATA_ERRORS = {
    "an image id listed twice": (
        "train", lambda d: d["images"][2].update(id=d["images"][0]["id"]),
        "images[2]: id 'train00000' is listed again (first at images[0]); which annotation "
        "is whose cannot be told",
    ),
    "an image without annotation": (
        "val", lambda d: d["annotations"].pop(1),
        "images[1]: image 'val00001' (low/val00001.png) has no annotation",
    ),
    "a soft probability given as a string": ("train", _soft("1"), SOFT),
    "a soft probability given as a boolean": ("train", _soft(True), SOFT),
    "a soft probability given as null": ("train", _soft(None), SOFT),
    "an empty train split": ("train", _emptied, "the train split (data.train) lists no images"),
    "an empty val split": ("val", _emptied, "the val split (data.val) lists no images"),
}  # fmt: skip


@pytest.mark.parametrize("case", DATA_ERRORS)
def test_data_errors_are_refused_in_one_line_naming_file_and_entry(
    train_cli, dataset, tmp_path, case
):
    data, config = dataset
    split, change, detail = DATA_ERRORS[case]
    path = getattr(data, split)
    rewrite(path, change)
    before = snapshot(tmp_path)
    assert_refused(check_data(train_cli, config), 2, f"error: {path}: {detail}")
    assert snapshot(tmp_path) == before


def test_a_fifo_in_place_of_an_image_is_named_not_opened(train_cli, dataset):
    data, config = dataset
    image = data.image_root / "low" / "val00002.png"
    image.unlink()
    with fifo(image) as watch:
        code, out, err = check_data(train_cli, config)
        assert not watch.opened
    assert code == 2
    assert f"annotations[2]: not a regular file: {image} is a FIFO\n" in err
    assert "val: 3 entries, 1 not a regular file" in out


def test_a_20_megapixel_strip_is_refused_as_too_large(train_cli, dataset):
    data, config = dataset
    image = data.image_root / "low" / "train00001.png"
    Image.new("RGB", (20_000_000, 1), (200, 10, 10)).save(image)  # 58 KB on disk
    code, out, err = check_data(train_cli, config)
    assert code == 2, err
    assert (
        f"annotations[1]: too large: {image}: 20000000x1: one side is more than 100 times "
        "the other\n"
    ) in err
    assert "train: 4 entries, 1 too large" in out


def test_the_pixel_bound_can_be_raised_and_lowered(train_cli, dataset, monkeypatch):
    _, config = dataset
    monkeypatch.setenv("INTCLIP_MAX_IMAGE_PIXELS", "255")  # the images are 16x16
    code, out, err = check_data(train_cli, config)
    assert code == 2 and "train: 4 entries, 4 too large" in out
    assert "16x16 is 256 pixels, more than the 255 an image may have (set " in err
    monkeypatch.setenv("INTCLIP_MAX_IMAGE_PIXELS", "many")
    assert_refused(
        check_data(train_cli, config), 2,
        "error: INTCLIP_MAX_IMAGE_PIXELS='many': must be a whole number of pixels, at least 1",
    )  # fmt: skip
