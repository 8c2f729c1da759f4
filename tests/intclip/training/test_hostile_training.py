"""Training faults: bad images, non-finite values, foreign or edited resume state, run
directories that would escape or reuse what the run did not create, and device garbage.

Each case runs `intclip-train run` in-process on a tiny generated dataset and a tiny CLIP, and
checks the exit code, the one error line and what is (not) left on disk.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from intclip.data.synthetic import make_synthetic_intentonomy
from pipeline.clip.loading import load_clip
from pipeline.descriptions.format import write_descriptions
from pipeline.embeddings.cache import embed_descriptions
from testkit.descriptions import descriptions_document
from testkit.disk import assert_refused, fifo, snapshot
from testkit.tiny_clip import TINY_CLIP_CONFIGS

VIT = TINY_CLIP_CONFIGS["vit"]
BIN = Path(sys.executable).parent
CLASSES = ["red_square", "green_square", "cyan_square", "violet_square"]


@pytest.fixture(scope="module")
def shared(tmp_path_factory, tiny_clip_files) -> dict[str, Path]:
    """A small dataset and class embeddings for it, made once."""
    root = tmp_path_factory.mktemp("hostile-training")
    data = make_synthetic_intentonomy(root / "data", sizes=(16, 8, 1), image_size=32)
    texts = {name: [f"A picture of a {name.replace('_', ' ')} here."] for name in CLASSES}
    descriptions = root / "squares.descriptions.json"
    write_descriptions(descriptions, descriptions_document(texts))
    clip = load_clip(str(VIT), tiny_clip_files["vit"])
    embedded = embed_descriptions(
        descriptions, clip, str(VIT), str(tiny_clip_files["vit"]), "mean", root / "cache"
    )
    return {
        "data": data.image_root.parent,
        "embeddings": embedded.path,
        "weights": tiny_clip_files["vit"],
    }


@pytest.fixture
def workspace(shared, tmp_path, monkeypatch) -> dict[str, Path]:
    """A private copy of the data, and a config writing runs under tmp_path/runs."""
    monkeypatch.setenv("INTCLIP_CACHE_DIR", str(tmp_path / "cache"))
    data = tmp_path / "data"
    shutil.copytree(shared["data"], data)
    config = {
        "data": {
            "image_root": str(data / "images"),
            "train": str(data / "synthetic_train.json"),
            "val": str(data / "synthetic_val.json"),
            "num_classes": 4,
            "num_workers": 0,
        },
        "clip": {"name": str(VIT), "pretrained": str(shared["weights"]),
                 "embeddings": str(shared["embeddings"])},
        "augment": {"randaugment_ops": 0},
        "optim": {"optimizer": "adamw", "lr": 0.01, "epochs": 2, "batch_size": 8,
                  "eval_batch_size": 8, "warmup_epochs": 0},
        "device": "cpu",
        "output_dir": str(tmp_path / "runs"),
        "run_name": "r",
    }  # fmt: skip
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return {"config": path, "runs": tmp_path / "runs", "images": data / "images" / "low"}


def one_error(result, code: int) -> str:
    exit_code, _, err = result
    assert exit_code == code, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and err.endswith(errors[0] + "\n"), err
    assert "Traceback" not in err
    return errors[0]


# ---- bad images ----


BAD_IMAGES = {
    "zero-byte": lambda path: path.write_bytes(b""),
    "truncated": lambda path: path.write_bytes(path.read_bytes()[:60]),
    "garbage": lambda path: path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100),
    "decompression bomb": lambda path: Image.new("L", (64, 64)).save(path),
}


@pytest.mark.parametrize("kind", BAD_IMAGES)
def test_a_bad_image_stops_before_training_naming_it(train_cli, workspace, monkeypatch, kind):
    monkeypatch.setenv("INTCLIP_MAX_IMAGE_PIXELS", "2000")  # 64x64 is too large, 32x32 is not
    victim = sorted(workspace["images"].glob("train*.png"))[3]
    BAD_IMAGES[kind](victim)
    line = one_error(train_cli("run", "--config", workspace["config"]), 2)
    assert line.startswith("error: train: 1 bad entries (1 ")
    assert str(victim) in line and line.endswith("run intclip-train check-data, or pass --skip-bad")
    assert not workspace["runs"].exists()  # a failed start leaves no run directory


def test_skip_bad_leaves_bad_images_out_and_counts_them(train_cli, workspace):
    victims = sorted(workspace["images"].glob("train*.png"))[:2]
    victims[0].write_bytes(b"")
    victims[1].write_bytes(victims[1].read_bytes()[:60])
    code, out, err = train_cli("run", "--config", workspace["config"], "--skip-bad",
                               "--stop-after", "1")  # fmt: skip
    assert code == 0, err
    assert "train: leaving out 2 bad entries (" in err
    assert Path(out.strip()) == workspace["runs"] / "r"


def test_images_are_decoded_once_across_runs(train_cli, workspace, monkeypatch):
    import intclip.data.check

    decoded: list[Path] = []
    original = intclip.data.check.decode_problem

    def counting(path: Path):
        decoded.append(path)
        return original(path)

    monkeypatch.setattr(intclip.data.check, "decode_problem", counting)
    args = ("run", "--config", workspace["config"], "--stop-after", "1")
    assert train_cli(*args)[0] == 0
    assert len(decoded) == 16 + 8
    decoded.clear()
    assert train_cli(*args, "--set", "run_name=again")[0] == 0
    assert decoded == []
    victim = sorted(workspace["images"].glob("val*.png"))[0]
    victim.write_bytes(b"")  # a changed file is decoded again
    line = one_error(train_cli(*args, "--set", "run_name=third"), 2)
    assert decoded == [victim] and str(victim) in line


# ---- images that change on disk after the check ----


def cut_after_the_check(monkeypatch, *victims: Path) -> None:
    """Truncate the victims once the run has checked (and decoded) train, then val."""
    import intclip.training.splits

    original = intclip.training.splits.check_index
    checked = []

    def check_then_cut(index, **kwargs):
        problems = original(index, **kwargs)
        checked.append(index)
        for victim in victims if len(checked) == 2 else ():
            victim.write_bytes(victim.read_bytes()[:60])
        return problems

    monkeypatch.setattr(intclip.training.splits, "check_index", check_then_cut)


def test_an_image_cut_mid_run_stops_it_naming_the_file(
    train_cli, workspace, stopped_run, monkeypatch
):
    victim = sorted(workspace["images"].glob("train*.png"))[5]
    last = (stopped_run / "last.pt").read_bytes()
    cut_after_the_check(monkeypatch, victim)

    line = one_error(train_cli("run", "--resume", stopped_run), 2)

    assert line.startswith("error: ") and f"{victim} cannot be read any more (" in line
    assert line.endswith(f"stopped, and {stopped_run / 'last.pt'} still holds the last good epoch")
    assert (stopped_run / "last.pt").read_bytes() == last


@pytest.mark.slow
def test_the_file_is_named_when_a_loader_worker_meets_it(train_cli, workspace, monkeypatch):
    victim = sorted(workspace["images"].glob("val*.png"))[2]
    cut_after_the_check(monkeypatch, victim)
    args = ("run", "--config", workspace["config"], "--set", "data.num_workers=2")
    line = one_error(train_cli(*args), 2)
    assert f"{victim} cannot be read any more (" in line and "before any epoch was saved" in line


def test_skip_bad_skips_an_image_cut_mid_run_and_says_so(train_cli, workspace, monkeypatch):
    victim = sorted(workspace["images"].glob("train*.png"))[5]
    cut_after_the_check(monkeypatch, victim)
    code, _, err = train_cli("run", "--config", workspace["config"], "--skip-bad")
    assert code == 0, err
    for epoch in (1, 2):
        assert (
            f"epoch {epoch}: skipped 1 image(s) that no longer decode (--skip-bad), the first: "
        ) in err
    assert str(victim) in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_gpu_decoding_without_cuda_is_refused_before_any_run_directory(train_cli, workspace):
    result = train_cli("run", "--config", workspace["config"], "--set", "data.decode=gpu")
    assert one_error(result, 2) == (
        "error: data.decode: gpu needs a CUDA device, and this run's is cpu; set data.decode: cpu"
    )
    assert not workspace["runs"].exists()


def test_a_batch_with_nothing_left_stops_even_under_skip_bad(train_cli, workspace, monkeypatch):
    cut_after_the_check(monkeypatch, *workspace["images"].glob("train*.png"))
    result = train_cli("run", "--config", workspace["config"], "--skip-bad")
    line = one_error(result, 2)
    assert line.startswith("error: a whole batch no longer decodes, the first: ")
    start = workspace["runs"] / "r" / "last.pt"
    assert line.endswith(f"stopped, before any epoch was saved; {start} holds the run's start")


# ---- non-finite values ----


def test_non_finite_loss_in_the_first_epoch_says_last_pt_holds_the_start(
    train_cli, workspace, monkeypatch
):
    from intclip.training.loss import AsymmetricLoss

    original = AsymmetricLoss.forward
    monkeypatch.setattr(
        AsymmetricLoss, "forward", lambda self, *a: original(self, *a) * float("inf")
    )
    line = one_error(train_cli("run", "--config", workspace["config"]), 3)
    # checked every few steps: an inf loss has made the weights nan by the time it is seen
    run_dir = workspace["runs"] / "r"
    assert re.fullmatch(
        r"error: loss is (inf|nan) at epoch 1, step \d+ or before; stopped, before any epoch "
        rf"was saved; {re.escape(str(run_dir))}/last\.pt holds the run's start",
        line,
    )
    expected = ["config.yaml", "inputs", "last.pt", "metrics.csv", "run.json", "train.log"]
    assert sorted(p.name for p in run_dir.iterdir()) == expected
    assert torch.load(run_dir / "last.pt", weights_only=True)["progress"]["epoch"] == 0
    assert (run_dir / "train.log").read_text().endswith(line + "\n")
    assert json.loads((run_dir / "run.json").read_text())["invocations"][0]["outcome"] == (
        "failed: " + line.removeprefix("error: ")
    )


def test_non_finite_val_scores_stop_the_run(train_cli, workspace, monkeypatch):
    import intclip.training.splits

    def nan_scores(model, dataset, *args, **kwargs):
        return np.full((len(dataset), 4), np.nan, dtype=np.float32)

    monkeypatch.setattr(intclip.training.loop, "predict_scores", nan_scores)
    line = one_error(train_cli("run", "--config", workspace["config"]), 3)
    assert line == (
        "error: non-finite val scores after epoch 1; stopped, before any epoch was saved; "
        f"{workspace['runs'] / 'r' / 'last.pt'} holds the run's start"
    )


# ---- resume ----


@pytest.fixture
def stopped_run(train_cli, workspace) -> Path:
    code, out, err = train_cli("run", "--config", workspace["config"], "--stop-after", "1")
    assert code == 0, err
    return Path(out.strip())


def rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_resume_after_a_partial_epoch_never_duplicates_metrics(train_cli, stopped_run):
    """A run killed after writing a row but before last.pt (the old order) resumes cleanly."""
    text = (stopped_run / "metrics.csv").read_text()
    (stopped_run / "metrics.csv").write_text(
        text + text.splitlines()[-1].replace("1,", "2,", 1) + "\n"
    )
    code, _, err = train_cli("run", "--resume", stopped_run)
    assert code == 0, err
    assert [row["epoch"] for row in rows(stopped_run)] == ["1", "2"]
    state = torch.load(stopped_run / "last.pt", weights_only=True)
    assert [row["epoch"] for row in state["progress"]["rows"]] == [1, 2]


@pytest.mark.slow
def test_resume_with_persistent_loader_workers_is_exact(train_cli, workspace):
    """Train and val workers persist across epochs; a resumed run starts new ones."""
    workers = ("--set", "data.num_workers=2")
    straight = ("run", "--config", workspace["config"], *workers, "--set", "run_name=straight")
    assert train_cli(*straight)[0] == 0
    code, out, err = train_cli("run", "--config", workspace["config"], *workers,
                               "--stop-after", "1")  # fmt: skip
    assert code == 0, err
    assert train_cli("run", "--resume", out.strip())[0] == 0
    resumed, whole = Path(out.strip()), workspace["runs"] / "straight"
    columns = ("epoch", "train_loss", "val_mAP", "val_macro_f1")
    assert [[r[c] for c in columns] for r in rows(resumed)] == [
        [r[c] for c in columns] for r in rows(whole)
    ]
    model = torch.load(resumed / "last.pt", weights_only=True)["model"]
    expected = torch.load(whole / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(model[key], expected[key]) for key in expected)


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda p: torch.save({"model": {}}, p), "not a intclip-train-state-v1 file"),
        (lambda p: p.write_bytes(p.read_bytes()[:1000]), "cannot resume from this file"),
        (lambda p: p.write_bytes(b""), "cannot resume from this file"),
    ],
)
def test_resume_refuses_a_foreign_or_truncated_last_pt(train_cli, stopped_run, damage, expected):
    damage(stopped_run / "last.pt")
    before = (stopped_run / "metrics.csv").read_bytes()
    line = one_error(train_cli("run", "--resume", stopped_run), 2)
    assert line.startswith(f"error: {stopped_run / 'last.pt'}: ") and expected in line
    assert (stopped_run / "metrics.csv").read_bytes() == before


def test_resume_refuses_an_edited_config_naming_the_difference(train_cli, stopped_run):
    path = stopped_run / "config.yaml"
    config = yaml.safe_load(path.read_text())
    config["optim"]["lr"] = 0.02
    config["optim"]["epochs"] = 3
    path.write_text(yaml.safe_dump(config))
    line = one_error(train_cli("run", "--resume", stopped_run), 2)
    assert line == (
        f"error: {path} was edited since last.pt was written (optim.lr 0.01 -> 0.02; "
        "optim.epochs 2 -> 3); the run could not continue exactly"
    )


def test_resume_accepts_an_edit_that_keeps_it_exact(train_cli, stopped_run):
    path = stopped_run / "config.yaml"
    config = yaml.safe_load(path.read_text())
    config["data"]["num_workers"] = 1
    path.write_text(yaml.safe_dump(config))
    code, _, err = train_cli("run", "--resume", stopped_run)
    assert code == 0, err


# ---- run directories and devices ----


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        *[(name, "run_name: Value error, must be one directory name inside output_dir")
          for name in ("../escape", "/tmp/abs", "..", ".", "a/b")],
        ('"nul\\0byte"', "Value error, run_name contains a NUL byte"),
    ],
)  # fmt: skip
def test_run_name_stays_inside_output_dir(train_cli, workspace, name, expected):
    line = one_error(
        train_cli("run", "--config", workspace["config"], "--set", f"run_name={name}"), 2
    )
    assert expected in line
    assert not workspace["runs"].exists()
    assert not (workspace["runs"].parent / "escape").exists()


def test_a_run_never_writes_into_a_directory_it_did_not_create(train_cli, workspace):
    mine = workspace["runs"] / "r"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("precious\n")
    line = one_error(train_cli("run", "--config", workspace["config"]), 2)
    assert (
        line == f"error: {mine} exists already and is not a run to resume: choose another run_name"
    )
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_output_dir_that_is_a_file(train_cli, workspace):
    workspace["runs"].write_text("a file\n")
    line = one_error(train_cli("run", "--config", workspace["config"]), 2)
    assert line == f"error: {workspace['runs']}: cannot create the output directory (File exists)"
    assert workspace["runs"].read_text() == "a file\n"


@pytest.mark.parametrize(
    ("device", "expected"),
    [("banana", "invalid device 'banana'"), ("cuda:0", "CUDA is not available")],
)
def test_device_garbage_leaves_no_run_directory(train_cli, workspace, device, expected):
    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    line = one_error(
        train_cli("run", "--config", workspace["config"], "--set", f"device={device}"), 2
    )
    assert expected in line
    assert not workspace["runs"].exists()


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda p: p.unlink(), "best-epoch summary not found"),
        (lambda p: p.write_text("{"), "invalid JSON"),
        (lambda p: p.write_text('{"val_threshold": "high"}'), "damaged, no val_threshold"),
        (lambda p: p.write_bytes(b"\xff\xfe"), "is not UTF-8 text"),
    ],
)
def test_predict_with_best_json_missing_or_damaged(
    train_cli, stopped_run, workspace, damage, expected
):
    damage(stopped_run / "best.json")
    image = sorted(workspace["images"].glob("val*.png"))[0]
    line = one_error(train_cli("predict", "--run", stopped_run, image, "--device", "cpu"), 2)
    assert line.startswith(f"error: {stopped_run / 'best.json'}") and expected in line


def test_eval_with_a_truncated_best_checkpoint(train_cli, stopped_run):
    best = stopped_run / "best.safetensors"
    best.write_bytes(best.read_bytes()[:100])
    line = one_error(
        train_cli("eval", "--run", stopped_run, "--split", "val", "--device", "cpu"), 2
    )
    assert line.startswith(f"error: {best}: damaged or not a safetensors checkpoint")


# ---- splits left empty ----


@pytest.mark.parametrize("split", ["train", "val"])
def test_an_empty_split_is_refused_before_any_run_directory(train_cli, workspace, split):
    config = yaml.safe_load(workspace["config"].read_text())
    path = Path(config["data"][split])
    document = json.loads(path.read_text())
    path.write_text(json.dumps({**document, "images": [], "annotations": []}))
    line = one_error(train_cli("run", "--config", workspace["config"]), 2)
    assert line == f"error: {path}: the {split} split (data.{split}) lists no images"
    assert not workspace["runs"].exists()


def test_skip_bad_that_leaves_no_train_entry_is_refused(train_cli, workspace):
    for image in workspace["images"].glob("train*.png"):
        image.write_bytes(b"")
    train = yaml.safe_load(workspace["config"].read_text())["data"]["train"]
    line = one_error(train_cli("run", "--config", workspace["config"], "--skip-bad"), 2)
    assert line == (
        f"error: train: every entry of {train} is bad (16 corrupt), so --skip-bad leaves "
        "nothing to train on; run intclip-train check-data"
    )
    assert not workspace["runs"].exists()


# ---- numeric settings out of range or out of order ----


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("seed=-1", "seed: Input should be greater than or equal to 0"),
        ("seed=5000000000", "seed: Input should be less than 4294967296"),
        ("augment.crop_scale=[0.9, 0.2]",
         "augment: Value error, crop_scale: the lowest share 0.9 exceeds the highest 0.2"),
        ("augment.crop_scale=[-1, 1]", "augment.crop_scale.0: Input should be greater than 0"),
        ("augment.crop_scale=[0.5, 3]",
         "augment.crop_scale.1: Input should be less than or equal to 1"),
        ("augment.randaugment_ops=1000",
         "augment.randaugment_ops: Input should be less than or equal to 14"),
        ("clip.image_size=3", "clip.image_size: Input should be greater than or equal to 32"),
        ("optim.warmup_epochs=5", "optim: Value error, warmup_epochs 5 exceeds epochs 2: the "
         "run would end still warming up"),
        ("optim.grad_clip=0", "optim.grad_clip: Input should be greater than 0"),
        ("loss.clip=1", "loss.clip: Input should be less than 1"),
    ],
)  # fmt: skip
def test_numeric_settings_out_of_range_are_refused_before_any_run_directory(
    train_cli, workspace, setting, expected
):
    line = one_error(train_cli("run", "--config", workspace["config"], "--set", setting), 2)
    assert line == f"error: {workspace['config']}: {expected}"
    assert not workspace["runs"].exists()


# ---- damaged or unwritable run state ----


def test_resume_refuses_a_last_pt_with_flipped_bytes(train_cli, stopped_run):
    last = stopped_run / "last.pt"
    data = bytearray(last.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    last.write_bytes(bytes(data))
    before = snapshot(stopped_run)
    line = one_error(train_cli("run", "--resume", stopped_run), 2)
    assert re.fullmatch(
        rf"error: {re.escape(str(last))}: damaged: its record \S+ does not match the checksum "
        "written with it; cannot resume from this file",
        line,
    ), line
    after = snapshot(stopped_run)
    log, earlier = after.pop("train.log"), before.pop("train.log")
    assert log.startswith(earlier) and log.endswith(f"{line}\n".encode())
    assert after == before  # only the log says why the run did not continue


def test_a_best_checkpoint_with_an_edited_header_is_refused(train_cli, stopped_run):
    best = stopped_run / "best.safetensors"
    data = best.read_bytes()
    field = b'aggregation_reduction\\":8'  # in the header's JSON, itself a JSON string
    assert field in data
    best.write_bytes(data.replace(field, field[:-1] + b"9", 1))
    line = one_error(
        train_cli("eval", "--run", stopped_run, "--split", "val", "--device", "cpu"), 2
    )
    assert line == f"error: {best} is corrupted: its header does not match its recorded checksum"


# ---- what predict opens and writes ----


def test_predict_skips_a_fifo_in_a_folder_and_refuses_one_named(
    train_cli, stopped_run, workspace, tmp_path
):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(sorted(workspace["images"].glob("val*.png"))[0], folder / "a.png")
    with fifo(folder / "b.png") as watch:
        code, out, err = train_cli(
            "predict", "--run", stopped_run, folder, "--format", "json", "--device", "cpu"
        )
        named = train_cli("predict", "--run", stopped_run, folder / "b.png", "--device", "cpu")
        assert not watch.opened
    assert code == 0, err
    assert [entry["image"] for entry in json.loads(out)] == [str(folder / "a.png")]
    assert_refused(
        named, 2, f"error: {folder / 'b.png'}: not a regular file but a FIFO, and not a directory"
    )


def test_predict_refuses_a_20_megapixel_strip_in_one_line(train_cli, stopped_run, tmp_path):
    strip = tmp_path / "strip.png"
    Image.new("RGB", (20_000_000, 1), (10, 200, 10)).save(strip)
    assert_refused(
        train_cli("predict", "--run", stopped_run, strip, "--device", "cpu"), 2,
        f"error: none of the 1 image(s) could be read; {strip}: cannot read this image "
        "(20000000x1: one side is more than 100 times the other)",
    )  # fmt: skip


def test_predict_output_refused_leaves_the_file_byte_identical(
    train_cli, stopped_run, workspace, tmp_path
):
    output = tmp_path / "other.csv"
    output.write_bytes(b"image,score\na.png,0.5\nb.png,0.25\nc.png,0.125")  # no final newline
    image = sorted(workspace["images"].glob("val*.png"))[0]
    before = snapshot(tmp_path)
    code, _, err = train_cli(
        "predict", "--run", stopped_run, image, "--output", output, "--device", "cpu"
    )
    assert code == 2
    assert err.splitlines()[-1] == (
        f"error: {output}: its columns are not this run's (2 vs 7, or other classes); "
        "choose another --output"
    )
    assert snapshot(tmp_path) == before


# ---- evaluations finishing at once ----


@pytest.mark.slow
def test_concurrent_evaluations_each_keep_their_row(stopped_run):
    """Six `eval` processes at once, each adding its row to the shared results.csv."""
    command = [str(BIN / "intclip-train"), "eval", "--run", str(stopped_run), "--split", "val",
               "--device", "cpu", "--json"]  # fmt: skip
    processes = [
        subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for _ in range(6)
    ]
    errors = [process.communicate(timeout=600)[1] for process in processes]
    assert [process.returncode for process in processes] == [0] * 6, errors
    table = (stopped_run.parent / "results.csv").read_text().splitlines()
    assert len(table) == 1 + 6 and table[0].startswith("run,split,")
