"""`intclip-train run`, `--resume`, `eval` and torchrun, on a generated dataset with a tiny CLIP.

All three stages run for real: descriptions from a loopback LLM, embeddings from a random tiny
CLIP saved to a file, then training on coloured squares whose labels are visible in the pixels.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from intclip.training.checkpoint import read_checkpoint_header
from intclip.training.config import load_config
from intclip.training.loop import NonFiniteLoss
from intclip.training.loop import train as train_run
from intclip.training.loss import AsymmetricLoss
from pipeline.common.files import sha256_file
from pipeline.descriptions.format import write_descriptions
from testkit.cli import TORCHRUN
from testkit.descriptions import descriptions_document
from testkit.squares import BIN, EPOCHS, cli, metrics, train, trained_tensors


@pytest.fixture(scope="module")
def straight_run(workspace) -> Path:
    return train(workspace, "straight")


@pytest.mark.slow
def test_training_learns_the_visible_labels(straight_run, workspace):
    rows = metrics(straight_run)
    assert [int(r["epoch"]) for r in rows] == list(range(1, EPOCHS + 1))
    val = json.loads((workspace["root"] / "data" / "synthetic_val.json").read_text())
    positives = np.mean([len(a["category_ids"]) / 4 for a in val["annotations"]])
    best = max(float(r["val_mAP"]) for r in rows)
    assert best > 100 * positives + 30, (best, positives)  # chance mAP is the positive rate
    summary = json.loads((straight_run / "best.json").read_text())
    assert summary["val_mAP"] == best
    for column in ("train_loss", "lr_semantic", "images_per_s", "val_macro_f1", "val_threshold"):
        assert all(r[column] for r in rows)
    assert (straight_run / "config.yaml").is_file()


@pytest.mark.slow
def test_resume_continues_exactly(straight_run, workspace):
    half = train(workspace, "halves", "--stop-after", EPOCHS // 2)
    assert len(metrics(half)) == EPOCHS // 2
    resumed = cli("intclip-train", "run", "--resume", half, env=workspace["env"])
    assert Path(resumed.stdout.strip().splitlines()[-1]) == half
    straight, halves = trained_tensors(straight_run), trained_tensors(half)
    assert straight.keys() == halves.keys()
    for name in straight:
        assert torch.equal(straight[name], halves[name]), name
    assert [r["val_mAP"] for r in metrics(half)] == [r["val_mAP"] for r in metrics(straight_run)]


@pytest.mark.slow
def test_eval_reports_every_level(straight_run, workspace):
    result = cli("intclip-train", "eval", "--run", straight_run, "--json", env=workspace["env"])
    report = json.loads(result.stdout)
    assert report["split"] == "test" and 0.05 <= report["threshold"] <= 0.95
    assert set(report["levels"]) == {"coarse"}
    assert report["class_ids"] == ["red_square", "green_square", "cyan_square", "violet_square"]
    assert len(report["fine"]["per_class_f1"]) == 4 and report["fine"]["subset_f1"] == {}
    assert (straight_run / "eval-test-per-class.png").stat().st_size > 1000
    test_scores = np.load(straight_run / "test_scores.npy")
    assert test_scores.shape == (33, 4) and np.isfinite(test_scores).all()


@pytest.mark.slow
def test_torchrun_trains_and_evaluates_like_one_process(straight_run, workspace, tmp_path):
    env = {**workspace["env"], "OMP_NUM_THREADS": "1"}
    trained = subprocess.run(
        [*TORCHRUN, str(BIN / "intclip-train"), "run", "--config", str(workspace["config"]),
         "--set", "run_name=ddp", "--stop-after", "1"],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    assert len(metrics(workspace["root"] / "runs" / "ddp")) == 1

    single = cli("intclip-train", "eval", "--run", straight_run, "--json", env=env).stdout
    single_scores = np.load(straight_run / "test_scores.npy")
    double = subprocess.run(
        [*TORCHRUN, str(BIN / "intclip-train"), "eval", "--run-dir", str(straight_run), "--json"],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert double.returncode == 0, double.stderr
    assert json.loads(double.stdout) == json.loads(single)  # 33 test images: an odd split
    assert np.allclose(np.load(straight_run / "test_scores.npy"), single_scores, atol=1e-6)


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_the_last_good_epoch(workspace, monkeypatch):
    config = load_config(workspace["config"], ["run_name=diverge"])
    steps_per_epoch = 128 // config.optim.batch_size
    calls = {"count": 0}
    original = AsymmetricLoss.forward

    def poisoned(self, logits, targets):
        calls["count"] += 1
        loss = original(self, logits, targets)
        return loss * float("nan") if calls["count"] > steps_per_epoch + 1 else loss

    monkeypatch.setattr(AsymmetricLoss, "forward", poisoned)
    with pytest.raises(
        NonFiniteLoss, match=r"loss is nan at epoch 2, step 16 or before; stopped"
    ) as info:
        train_run(config, "diverge")
    assert info.value.exit_code == 3
    run_dir = workspace["root"] / "runs" / "diverge"
    assert torch.load(run_dir / "last.pt", weights_only=True)["progress"]["epoch"] == 1
    assert len(metrics(run_dir)) == 1
    assert "error: loss is nan at epoch 2" in (run_dir / "train.log").read_text()


@pytest.mark.slow
def test_predict_in_every_format(straight_run, workspace, tmp_path):
    low = workspace["root"] / "data" / "images" / "low"
    images = [low / "test00000.png", low / "test00001.png"]
    result = cli("intclip-train", "predict", "--run", straight_run, *images, "--format", "json",
                 env=workspace["env"])  # fmt: skip
    predictions = json.loads(result.stdout)
    threshold = json.loads((straight_run / "best.json").read_text())["val_threshold"]
    assert [p["image"] for p in predictions] == [str(i) for i in images]
    for prediction in predictions:
        levels = [intent["level"] for intent in prediction["intents"]]
        assert levels == ["fine"] * 4 + ["coarse"] * 2
        for intent in prediction["intents"]:
            assert intent["predicted"] == (intent["probability"] > threshold)
        fine = [i["probability"] for i in prediction["intents"] if i["level"] == "fine"]
        coarse = {
            i["id"]: i["probability"] for i in prediction["intents"] if i["level"] == "coarse"
        }
        assert fine == sorted(fine, reverse=True)
        assert max(coarse.values()) == max(fine)  # a parent scores its best child
    table = cli("intclip-train", "predict", "--run", straight_run, low, "--top", "1",
                env=workspace["env"]).stdout  # fmt: skip
    fine_lines = [line for line in table.splitlines() if "  fine  " in line]
    assert len(fine_lines) == 128 + 33 + 33  # every image of the directory, top 1
    rows = cli("intclip-train", "predict", "--run", straight_run, images[0], "--format", "csv",
               env=workspace["env"]).stdout.splitlines()  # fmt: skip
    assert rows[0] == "image,level,id,name,probability,predicted" and len(rows) == 1 + 6

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    empty = tmp_path / "empty"
    empty.mkdir()
    for target, expected in [
        (tmp_path / "missing.png", "no such image or directory"),
        (empty, "no images"),
        (broken, "cannot read this image"),
    ]:
        failed = subprocess.run(
            [str(BIN / "intclip-train"), "predict", "--run", str(straight_run), str(target)],
            capture_output=True, text=True, env=workspace["env"], check=False,
        )  # fmt: skip
        assert failed.returncode == 2 and expected in failed.stderr
        assert failed.stderr.count("\n") == 1


@pytest.mark.slow
def test_zeroshot_baseline_is_beaten_by_training(straight_run, workspace):
    result = cli("intclip-train", "zeroshot", "--config", workspace["config"], "--json",
                 env=workspace["env"])  # fmt: skip
    baseline = json.loads(result.stdout)
    trained = json.loads(
        cli("intclip-train", "eval", "--run", straight_run, "--json", env=workspace["env"]).stdout
    )
    assert baseline["split"] == "test" and set(baseline["levels"]) == {"coarse"}
    assert trained["fine"]["mAP"] > baseline["fine"]["mAP"] + 10


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), "give --config F for a new run, or --resume RUN_DIR"),
        (("--resume", "/nonexistent"), "no last.pt to resume from"),
        (("--config", "/nonexistent.yaml"), "config file not found"),
    ],
)
def test_run_refuses_bad_invocations(train_cli, args, expected):
    code, _, err = train_cli("run", *args)
    assert code == 2 and expected in err and err.count("\n") == 1


def prompt_settings(workspace) -> list[str]:
    """`--set` arguments for a short `model.text: prompts` run on the workspace's data."""
    descriptions = workspace["root"] / "squares.descriptions.json"
    pairs = {
        "model.text": "prompts",
        "model.prompts.n_ctx": 4,
        "clip.embeddings": "null",
        "clip.descriptions": descriptions,
        "optim.epochs": 2,
    }
    return [arg for key, value in pairs.items() for arg in ("--set", f"{key}={value}")]


@pytest.mark.slow
def test_prompts_run_resumes_evaluates_predicts_and_refuses_cached(workspace, tmp_path):
    settings = prompt_settings(workspace)
    straight = train(workspace, "prompts", *settings)
    half = train(workspace, "prompts-halves", *settings, "--stop-after", 1)
    cli("intclip-train", "run", "--resume", half, env=workspace["env"])
    straight_tensors, half_tensors = trained_tensors(straight), trained_tensors(half)
    assert {"prompts.positive", "prompts.negative"} <= straight_tensors.keys()
    for name in straight_tensors:
        assert torch.equal(straight_tensors[name], half_tensors[name]), name
    header = read_checkpoint_header(straight / "best.safetensors")
    descriptions = workspace["root"] / "squares.descriptions.json"
    assert header.descriptions_sha256 == sha256_file(descriptions)

    report = json.loads(
        cli("intclip-train", "eval", "--run", straight, "--json", env=workspace["env"]).stdout
    )
    assert report["class_ids"] == ["red_square", "green_square", "cyan_square", "violet_square"]
    image = workspace["root"] / "data" / "images" / "low" / "test00000.png"
    predicted = cli("intclip-train", "predict", "--run", straight, image, "--format", "json",
                    env=workspace["env"])  # fmt: skip
    assert len(json.loads(predicted.stdout)[0]["intents"]) == 4 + 2
    baseline = cli("intclip-train", "zeroshot", "--config", workspace["config"], *settings,
                   "--json", env=workspace["env"])  # fmt: skip
    assert json.loads(baseline.stdout)["class_ids"] == report["class_ids"]

    config = yaml.safe_load((straight / "config.yaml").read_text())
    config["model"]["text"] = "cached"
    config["clip"]["descriptions"] = None
    config["clip"]["embeddings"] = load_config(workspace["config"]).clip.embeddings.as_posix()
    (straight / "config.yaml").write_text(yaml.safe_dump(config))
    refused = subprocess.run(
        [str(BIN / "intclip-train"), "eval", "--run", str(straight)],
        capture_output=True, text=True, env=workspace["env"], check=False,
    )  # fmt: skip
    assert refused.returncode == 2
    assert "was trained with model.text: prompts; it cannot load as model.text: cached" in (
        refused.stderr
    )


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model.text=prompts"], "model.text: prompts reads the class texts from clip"),
        (
            ["model.text=prompts", "clip.embeddings=null", "clip.descriptions=d.json",
             "clip.aggregate=mean+name"],
            "clip.aggregate applies to cached embeddings",
        ),
    ],
)  # fmt: skip
def test_prompts_config_needs_the_descriptions_file(train_cli, workspace, overrides, expected):
    code, _, err = train_cli(
        "run", "--config", workspace["config"], *(a for o in overrides for a in ("--set", o))
    )
    assert code == 2 and expected in err and err.count("\n") == 1


def test_prompts_too_long_for_the_context_stop_the_run_naming_the_class(
    train_cli, workspace, tmp_path
):
    texts = {name: ["A square."] for name in ("red_square", "green_square", "cyan_square")}
    texts["violet_square"] = [" ".join(["violet"] * 70)]  # fits alone, not after 16 contexts
    descriptions = tmp_path / "long.descriptions.json"
    write_descriptions(descriptions, descriptions_document(texts))
    overrides = {
        "model.text": "prompts",
        "clip.embeddings": "null",
        "clip.descriptions": descriptions,
        "output_dir": tmp_path / "runs",
    }
    args = [arg for key, value in overrides.items() for arg in ("--set", f"{key}={value}")]
    code, _, err = train_cli("run", "--config", workspace["config"], *args)
    assert code == 2 and err.count("\n") == 1
    assert "class 3 'violet_square': 88 tokens with 16 learned context tokens" in err
    assert not list((tmp_path / "runs").glob("*/last.pt"))


def test_predict_walks_subdirectories_and_skips_unreadable_files(straight_run, workspace, tmp_path):
    low = workspace["root"] / "data" / "images" / "low"
    photos = tmp_path / "photos"
    (photos / "nested").mkdir(parents=True)
    shutil.copy(low / "test00000.png", photos / "a.png")
    shutil.copy(low / "test00001.png", photos / "nested" / "b.png")
    (photos / "nested" / "broken.png").write_text("not an image")
    result = cli("intclip-train", "predict", "--run", straight_run, photos, "--format", "json",
                 env=workspace["env"])  # fmt: skip
    images = [p["image"] for p in json.loads(result.stdout)]
    assert images == [str(photos / "a.png"), str(photos / "nested" / "b.png")]
    assert f"skipped: {photos / 'nested' / 'broken.png'}: cannot read this image" in result.stderr
    assert "warning: skipped 1 unreadable image(s)" in result.stderr
    flat = cli("intclip-train", "predict", "--run", straight_run, photos, "--no-recursive",
               "--format", "json", env=workspace["env"])  # fmt: skip
    assert [p["image"] for p in json.loads(flat.stdout)] == [str(photos / "a.png")]
