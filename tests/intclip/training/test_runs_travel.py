"""A run directory moved to a place where its inputs never were, evaluated and predicted with
from another working directory; predict's resumable output; zeroshot's and eval's files.

The run is trained from relative paths on copies of its inputs; then the run directory is moved
and the copies are moved away, as if the run had been carried to another machine that has the
same CLIP weights file somewhere else.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.common.files import sha256_file
from testkit.squares import BIN
from testkit.tiny_clip import TINY_CLIP_CONFIGS, save_random_clip

pytestmark = pytest.mark.slow


def attempt(
    *args: object, env: dict[str, str], cwd: Path | str = "/"
) -> subprocess.CompletedProcess:
    """`intclip-train ARGS...` from `cwd`, whatever its exit code."""
    command = [str(BIN / "intclip-train"), *(str(a) for a in args)]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, check=False)


def succeed(*args: object, env: dict[str, str], cwd: Path | str = "/") -> str:
    result = attempt(*args, env=env, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result.stdout


def refused(result: subprocess.CompletedProcess, *expected: str) -> None:
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    for text in expected:
        assert text in result.stderr


@pytest.fixture(scope="module")
def moved(workspace, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("travel")
    config = yaml.safe_load(workspace["config"].read_text())
    (root / "inputs").mkdir()
    for section, key in (("clip", "name"), ("clip", "pretrained"), ("clip", "embeddings"),
                         ("data", "taxonomy")):  # fmt: skip
        source = Path(config[section][key])
        shutil.copy(source, root / "inputs" / source.name)
        config[section][key] = f"inputs/{source.name}"  # relative to the training directory
    config["optim"]["epochs"] = 1
    config["output_dir"] = "runs"
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    trained = Path(
        succeed("run", "--config", "config.yaml", env=workspace["env"], cwd=root)
        .strip()
        .splitlines()[-1]
    )
    weights = Path(config["clip"]["pretrained"]).name
    (root / "elsewhere").mkdir()
    run_dir = (root / "elsewhere" / "travel").absolute()
    (root / trained).rename(run_dir)
    (root / "inputs").rename(root / "elsewhere" / "inputs")
    images = workspace["root"] / "data" / "images" / "low"
    return {
        "run": run_dir,
        "weights": root / "elsewhere" / "inputs" / weights,
        "images": images,
        "env": workspace["env"],
        "root": root,
    }


def test_a_moved_run_needs_its_weights_file_named_and_refuses_another(moved, tmp_path):
    image = moved["images"] / "test00000.png"
    recorded = moved["root"] / "inputs" / moved["weights"].name
    refused(
        attempt("predict", "--run", moved["run"], image, env=moved["env"]),
        f"trained on the CLIP weights file {recorded}",
        "pass --pretrained PATH",
    )
    other = save_random_clip(TINY_CLIP_CONFIGS["vit"], tmp_path / "other.safetensors", seed=1)
    refused(
        attempt("predict", "--run", moved["run"], image, "--pretrained", other, env=moved["env"]),
        f"{other} has sha256 {sha256_file(other)[:16]}",
        f"with sha256 {sha256_file(moved['weights'])[:16]}",
    )
    predictions = json.loads(
        succeed(
            "predict",
            "--run",
            moved["run"],
            image,
            "--pretrained",
            moved["weights"],
            "--format",
            "json",
            env=moved["env"],
        )
    )
    assert [p["image"] for p in predictions] == [str(image)]
    assert [i["level"] for i in predictions[0]["intents"]] == ["fine"] * 4 + ["coarse"] * 2


def test_a_moved_run_evaluates_and_score_agrees_with_eval(moved):
    run_dir, env = moved["run"], moved["env"]
    evaluate = ("eval", "--run", run_dir, "--pretrained", moved["weights"], "--json")
    report = json.loads(succeed(*evaluate, env=env))
    for split in ("val", "test"):
        labels = np.load(run_dir / f"{split}_labels.npy")
        assert labels.shape == np.load(run_dir / f"{split}_scores.npy").shape == (33, 4)
    scored = json.loads(
        succeed(
            "score",
            "--json",
            *(
                arg
                for split in ("val", "test")
                for arg in (
                    f"--{split}-scores",
                    run_dir / f"{split}_scores.npy",
                    f"--{split}-labels",
                    run_dir / f"{split}_labels.npy",
                )
            ),
            env=env,
        )
    )
    assert scored["threshold"] == report["threshold"]
    for metric in ("macro_f1", "micro_f1", "samples_f1", "mAP"):
        assert scored[metric] == pytest.approx(report["fine"][metric])
    assert scored["val_macro_f1"] == pytest.approx(report["val"]["macro_f1"])

    succeed(*evaluate[:-1], "--split", "val", env=env)
    results = pd.read_csv(run_dir.parent / "results.csv")
    assert list(results["run"]) == ["travel", "travel"]
    assert list(results["split"]) == ["test", "val"]
    assert results["mAP"][0] == pytest.approx(report["fine"]["mAP"])
    assert results["config_hash"].nunique() == 1 and len(results["config_hash"][0]) == 64

    (run_dir.parent / "results.csv").write_text("not,a\nresults,table,at all\n")
    refused(attempt(*evaluate, env=env), f"{run_dir.parent / 'results.csv'}: ", "move it away")
    (run_dir.parent / "results.csv").unlink()


def test_a_run_with_changed_copies_is_refused_and_an_old_run_still_works(moved, tmp_path):
    image = moved["images"] / "test00000.png"
    damaged = tmp_path / "damaged"
    shutil.copytree(moved["run"], damaged)
    with (damaged / "inputs" / "taxonomy.yaml").open("a") as handle:
        handle.write("# edited\n")
    refused(
        attempt(
            "predict", "--run", damaged, image, "--pretrained", moved["weights"], env=moved["env"]
        ),
        "inputs/taxonomy.yaml: changed since the run was made",
    )
    (damaged / "run.json").write_text('{"format": "intclip-run-v0"}')
    refused(
        attempt("predict", "--run", damaged, image, env=moved["env"]),
        "run.json: not an intclip run manifest (format",
    )

    old = tmp_path / "old"  # a run from before run.json, on the machine it was trained on
    shutil.copytree(moved["run"], old)
    shutil.rmtree(old / "inputs")
    (old / "run.json").unlink()
    config = yaml.safe_load((old / "config.yaml").read_text())
    inputs = moved["weights"].parent
    config["clip"].update(
        name=str(inputs / "tiny-vit.json"),
        pretrained=str(moved["weights"]),
        embeddings=str(inputs / Path(config["clip"]["embeddings"]).name),
    )
    config["data"]["taxonomy"] = str(inputs / "squares.yaml")
    (old / "config.yaml").write_text(yaml.safe_dump(config))
    predictions = json.loads(
        succeed("predict", "--run", old, image, "--format", "json", env=moved["env"])
    )
    assert len(predictions) == 1


def test_predict_output_continues_after_an_interruption(moved, tmp_path):
    photos = tmp_path / "photos"
    (photos / "nested").mkdir(parents=True)
    for index in range(5):
        shutil.copy(moved["images"] / f"test0000{index}.png", photos / "nested" / f"{index}.png")
    (photos / "broken.png").write_text("not an image")
    common = (
        "predict",
        "--run",
        moved["run"],
        photos,
        "--pretrained",
        moved["weights"],
        "--batch-size",
        2,
        "--workers",
        1,
    )
    for suffix in (".csv", ".jsonl"):
        whole, output = tmp_path / f"whole{suffix}", tmp_path / f"out{suffix}"
        first = attempt(*common, "--output", whole, env=moved["env"])
        assert first.returncode == 0, first.stderr
        assert first.stdout == ""
        assert f"skipped: {photos / 'broken.png'}: cannot read this image" in first.stderr
        assert f"{whole}: 5 image(s) predicted, 1 unreadable" in first.stderr
        lines = whole.read_text().splitlines(keepends=True)
        header = 1 if suffix == ".csv" else 0
        assert len(lines) == header + 6
        # killed while writing the third row: two whole rows, then part of one
        output.write_text("".join(lines[: header + 2]) + lines[header + 2][:9])
        again = attempt(*common, "--output", output, env=moved["env"])
        assert again.returncode == 0, again.stderr
        assert f"{output}: 2 image(s) already there, skipped" in again.stderr
        assert f"{output}: 4 image(s) predicted" in again.stderr
        assert output.read_text() == whole.read_text()  # exactly one row per image
        done = attempt(*common, "--output", output, env=moved["env"])
        assert "6 image(s) already there" in done.stderr and output.read_text() == whole.read_text()
    rows = pd.read_csv(tmp_path / "whole.csv", keep_default_na=False)
    assert rows["image"].tolist()[0] == str(photos / "broken.png")
    assert {"fine:red_square", "coarse:warm", "predicted"} <= set(rows.columns)

    refused(
        attempt(*common, "--output", tmp_path / "out.txt", env=moved["env"]),
        "unknown format '.txt'; use .csv or .jsonl",
    )
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    refused(
        attempt(*common, "--output", blocker / "out.csv", env=moved["env"]),
        f"{blocker / 'out.csv'}: cannot",
    )


def test_predict_stopped_by_sigterm_keeps_whole_rows_stops_its_workers_and_continues(
    moved, tmp_path
):
    images = sorted(moved["images"].glob("*.png"))
    output = tmp_path / "out.jsonl"
    command = [str(BIN / "intclip-train"), "predict", "--run", str(moved["run"]),
               str(moved["images"]), "--pretrained", str(moved["weights"]), "--batch-size", "1",
               "--workers", "2", "--output", str(output)]  # fmt: skip
    process = subprocess.Popen(
        command, env=moved["env"], cwd="/", text=True, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    while process.poll() is None and (not output.exists() or output.read_text().count("\n") < 3):
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    with pytest.raises(ProcessLookupError):
        os.killpg(process.pid, 0)  # no DataLoader worker outlived it
    written = output.read_text().splitlines()
    assert 3 <= len(written) < len(images)

    again = attempt(*command[1:], env=moved["env"])
    assert again.returncode == 0, again.stderr
    assert f"{len(written)} image(s) already there" in again.stderr
    rows = [json.loads(line)["image"] for line in output.read_text().splitlines()]
    assert sorted(rows) == sorted(map(str, images))  # exactly one row per image


def test_zeroshot_leaves_what_eval_leaves(workspace, tmp_path):
    target = tmp_path / "baselines" / "zs"
    report = json.loads(
        succeed(
            "zeroshot",
            "--config",
            workspace["config"],
            "--output-dir",
            target,
            "--json",
            env=workspace["env"],
        )
    )
    assert json.loads((target / "eval-test.json").read_text()) == report
    assert (target / "eval-test-per-class.png").is_file()
    for name in ("val_scores", "val_labels", "test_scores", "test_labels"):
        assert np.load(target / f"{name}.npy").shape == (33, 4)
    results = pd.read_csv(tmp_path / "baselines" / "results.csv")
    assert list(results["run"]) == ["zs"] and results["threshold"][0] == report["threshold"]
