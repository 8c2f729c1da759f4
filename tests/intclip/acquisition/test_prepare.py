"""`intclip-train prepare`: images already on disk stored smaller, once, for training."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from intclip.acquisition.prepare import RECORD_NAME, TEMP_SUFFIX
from intclip.data.shrink import CROP_RATIO, RESIZE_JPEG_QUALITY, smallest_short_side
from testkit.cli import interrupt_when
from testkit.paths import ROOT

ENTRY = ROOT / "testkit" / "light_entry.py"
CHILD_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
WAIT_LIMIT_S = 120.0  # a bound on waiting for a subprocess, never an expectation of speed
SIDE = 366  # smallest_short_side(224, 0.5)


def noise(path: Path, width: int, height: int, seed: int = 0) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture
def originals(tmp_path: Path) -> Path:
    """A landscape and a portrait JPEG, a PNG in a subfolder, one image small already, and
    two files Pillow cannot read: a text file and a PDF (a format it only writes)."""
    root = tmp_path / "images"
    noise(root / "wide.jpg", 900, 600)
    noise(root / "tall.jpg", 500, 800, seed=1)
    noise(root / "sub" / "square.png", 700, 700, seed=2)
    noise(root / "small.jpg", 300, 200, seed=3)
    (root / "notes.txt").write_text("not an image")
    (root / "paper.pdf").write_bytes(b"%PDF-1.4 Pillow writes PDFs but cannot read them")
    return root


def prepare_args(images: Path, out: Path, *more: object) -> list[object]:
    return ["prepare", "--images", images, "--out", out, "--resize-short-side", SIDE, *more]


def test_images_are_stored_smaller_mirrored_and_recorded(originals, tmp_path, train_cli):
    out = tmp_path / "prepared"

    code, stdout, err = train_cli(*prepare_args(originals, out, "--workers", 2))

    assert code == 0, err
    assert "3 resized, 1 copied (small already), 0 up to date, 0 failed of 4 images" in stdout
    sizes = {
        path.relative_to(out).as_posix(): Image.open(path).size
        for path in out.rglob("*")
        if path.is_file() and path.name != RECORD_NAME
    }
    assert sizes == {
        "wide.jpg": (549, SIDE),
        "tall.jpg": (SIDE, 586),
        "sub/square.png": (SIDE, SIDE),
        "small.jpg": (300, 200),
    }
    assert Image.open(out / "sub" / "square.png").format == "PNG"
    assert (out / "small.jpg").read_bytes() == (originals / "small.jpg").read_bytes()
    record = json.loads((out / RECORD_NAME).read_text())
    assert record == {
        "source": str(originals.resolve()),
        "resize_short_side": SIDE,
        "jpeg_quality": RESIZE_JPEG_QUALITY,
        "crop_size": 224,
        "crop_scale_min": 0.5,
        "total": 4,
        "resized": 3,
        "copied": 1,
        "skipped": 0,
        "failures": [],
    }


def test_a_rerun_skips_up_to_date_images_and_redoes_changed_ones(originals, tmp_path, train_cli):
    out = tmp_path / "prepared"
    assert train_cli(*prepare_args(originals, out))[0] == 0
    noise(originals / "wide.jpg", 1000, 400, seed=9)
    later = time.time() + 10  # the edit is newer than its copy, whatever the clock's resolution
    os.utime(originals / "wide.jpg", (later, later))

    code, stdout, _ = train_cli(*prepare_args(originals, out))

    assert code == 0
    assert "1 resized, 0 copied (small already), 3 up to date" in stdout
    assert Image.open(out / "wide.jpg").size == (915, SIDE)


def test_every_training_crop_of_a_prepared_image_spans_the_crop_size():
    """The rule of `intclip.data.shrink`, checked against torchvision's own crop sampler."""
    assert smallest_short_side(224, 0.5) == SIDE
    torch.manual_seed(0)
    for width, height in [(SIDE, SIDE), (SIDE, 1000), (2000, SIDE)]:
        image = Image.new("RGB", (width, height))
        narrowest = min(
            min(T.RandomResizedCrop.get_params(image, (0.5, 1.0), CROP_RATIO)[2:])
            for _ in range(2000)
        )
        assert narrowest >= 224
    # one pixel less and the narrowest possible crop of a square image is under 224
    assert int(((SIDE - 1) ** 2 * 0.5 * CROP_RATIO[0]) ** 0.5) < 224


@pytest.mark.parametrize(
    ("more", "expected"),
    [
        (("--resize-short-side", "300"), "--resize-short-side 300 is below 366, the least"),
        (("--crop-size", "336"), "--resize-short-side 366 is below 549"),
        (("--crop-scale-min", "0"), "--crop-scale-min 0 is not in (0, 1]"),
        (("--crop-scale-min", "1.5"), "--crop-scale-min 1.5 is not in (0, 1]"),
    ],
)
def test_a_short_side_that_would_enlarge_crops_is_refused(
    originals, tmp_path, train_cli, more, expected
):
    out = tmp_path / "prepared"
    code, _, err = train_cli(*prepare_args(originals, out), *more)
    assert code == 2 and err.startswith(f"error: {expected}") and len(err.splitlines()) == 1
    assert not out.exists()


def test_folders_that_overlap_or_are_missing_are_refused(originals, tmp_path, train_cli):
    cases = [
        (originals / "inside", "--out must lie outside --images"),
        (originals, "--out must lie outside --images"),
        (originals / "wide.jpg", "--out is not a folder"),
    ]
    for out, expected in cases:
        code, _, err = train_cli(*prepare_args(originals, out))
        assert code == 2 and expected in err, err
    code, _, err = train_cli(*prepare_args(tmp_path / "nowhere", tmp_path / "out"))
    assert code == 2 and "--images is not a folder" in err
    (tmp_path / "empty").mkdir()
    code, _, err = train_cli(*prepare_args(tmp_path / "empty", tmp_path / "out"))
    assert code == 2 and "no image files in this folder" in err


def test_another_short_side_into_the_same_folder_is_refused(originals, tmp_path, train_cli):
    out = tmp_path / "prepared"
    assert train_cli(*prepare_args(originals, out))[0] == 0
    before = {path: path.stat().st_mtime_ns for path in out.rglob("*")}

    code, _, err = train_cli(*prepare_args(originals, out), "--resize-short-side", "400")

    assert code == 2
    assert "holds images prepared with resize_short_side 366 (not 400)" in err
    assert {path: path.stat().st_mtime_ns for path in out.rglob("*")} == before
    (out / RECORD_NAME).write_text('{"source": 3}')
    code, _, err = train_cli(*prepare_args(originals, out))
    assert code == 2 and f"{out / RECORD_NAME}: not a prepare record" in err


def test_an_undecodable_image_fails_alone_and_is_listed(originals, tmp_path, train_cli):
    whole = (originals / "wide.jpg").read_bytes()
    (originals / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    out = tmp_path / "prepared"

    code, stdout, err = train_cli(*prepare_args(originals, out))

    assert code == 1
    assert "1 failed of 5 images" in stdout
    assert "1 images could not be prepared, the first: cut.jpg:" in err
    record = json.loads((out / RECORD_NAME).read_text())
    assert [failure["path"] for failure in record["failures"]] == ["cut.jpg"]
    assert not (out / "cut.jpg").exists() and not list(out.rglob(f"*{TEMP_SUFFIX}"))
    assert (out / "wide.jpg").is_file()


def test_prepare_imports_no_torch(originals, tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            str(ENTRY),
            "intclip.cli.main:main",
            *map(str, prepare_args(originals, tmp_path / "o")),
        ],
        env=CHILD_ENV,
        capture_output=True,
        text=True,
        timeout=WAIT_LIMIT_S,
    )
    assert done.returncode == 0, done.stderr
    assert "heavy modules: []" in done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_and_sigterm_leave_whole_images_and_a_rerun_finishes(tmp_path, stop):
    images = tmp_path / "images"
    for i in range(40):
        noise(images / f"img{i:02d}.jpg", 1600, 1200, seed=i)
    out = tmp_path / "prepared"
    command = [sys.executable, "-c", "from intclip.cli.main import main; main()"]
    args = [*command, *map(str, prepare_args(images, out, "--workers", 1))]
    code, err = interrupt_when(
        args, lambda: bool(list(out.glob("img*.jpg"))), stop, CHILD_ENV, WAIT_LIMIT_S
    )

    assert code == 130, err
    assert "stopped: resized" in err and "Traceback" not in err
    done = list(out.glob("img*.jpg"))
    assert 1 <= len(done) < 40 and not list(out.rglob(f"*{TEMP_SUFFIX}"))
    assert all(min(Image.open(path).size) == SIDE for path in done)
    finished = subprocess.run(args, capture_output=True, text=True, env=CHILD_ENV)
    assert finished.returncode == 0, finished.stderr
    assert f"{len(done)} up to date" in finished.stdout


def test_the_help_states_the_short_side_rule(train_cli):
    code, out, _ = train_cli("prepare", "--help")
    flat = " ".join(out.replace("│", " ").split())
    assert code == 0 and "At least crop size * sqrt(4 / (3 * crop scale min)), e.g. 366" in flat
