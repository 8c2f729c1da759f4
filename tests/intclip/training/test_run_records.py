"""What a run directory tells a stranger (issue 24): run.json provenance, the run card, the
curves and the per-class chart, timestamped train.log lines, per-group lr columns, and the
same scalars, config and final report in TensorBoard, W&B (offline) and MLflow (file store),
written by the real libraries. Runs use the generated squares and the tiny CLIP of test_train.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from PIL import Image

from testkit.squares import BIN, cli, metrics, train
from testkit.wandb_records import logged

STEPS = 128 // 16
STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ")


@pytest.fixture(scope="module")
def tracked(workspace) -> Path:
    """Two epochs written to all three trackers, then evaluated on test at 0.5 too."""
    run_dir = train(
        workspace, "tracked", "--set", "optim.epochs=2",
        "--set", "log.trackers=[tensorboard, wandb, mlflow]",
    )  # fmt: skip
    evaluated = cli(
        "intclip-train", "eval", "--run", run_dir, "--threshold", "0.5", env=workspace["env"]
    )
    run_dir.joinpath("eval.stderr").write_text(evaluated.stderr)
    return run_dir


@pytest.mark.slow
def test_run_json_says_what_made_the_run(tracked):
    manifest = json.loads((tracked / "run.json").read_text())
    assert manifest["format"] == "intclip-run-v2"
    (made,) = manifest["invocations"]
    assert made["command"].split()[1:4] == ["run", "--config", made["command"].split()[3]]
    assert "--set run_name=tracked" in made["command"] and made["outcome"] == "finished"
    assert made["cwd"] and made["hostname"] and made["device"].startswith("cpu")
    assert made["started"] < made["ended"]
    software = made["software"]
    assert re.fullmatch(r"[0-9a-f]{40}", software["git_commit"])  # the tests run in a checkout
    assert isinstance(software["git_dirty"], bool)
    for library in ("intclip", "python", "torch", "torchvision", "open_clip"):
        assert software[library], library
    diff = manifest["config_diff"]
    assert diff["shipped"] == "intentonomy_rn101.yaml"
    changed = {c["key"]: (c["shipped"], c["run"]) for c in diff["changed"]}
    assert changed["optim.optimizer"] == ("sgd", "adamw") and changed["data.num_classes"] == (28, 4)
    assert set(manifest["trackers"]) == {"wandb", "mlflow"}
    shown = (tracked / "eval.stderr").read_text()
    assert f"trained by intclip {software['intclip']}, git {software['git_commit'][:12]}" in shown
    assert made["command"] in shown


@pytest.mark.slow
def test_the_run_card_tells_a_stranger_what_the_run_is(tracked):
    card = (tracked / "README.md").read_text()
    assert card.startswith("# Run `tracked`\n")
    for said in ("## Provenance", "intentonomy_rn101.yaml", "| `optim.optimizer` | `\"sgd\"` | "
                 "`\"adamw\"` |", "## Epochs", "Best epoch (val mAP", "## Evaluation",
                 "| test | 0.5 (fixed) |", "![learning-curves](learning-curves.png)",
                 "![eval-test-per-class](eval-test-per-class.png)"):  # fmt: skip
        assert said in card, said
    epoch_rows = [line for line in card.splitlines() if re.match(r"^\| [12] \| ", line)]
    assert len(epoch_rows) == 2


@pytest.mark.slow
def test_curves_and_the_per_class_chart_are_pictures(tracked, workspace, tmp_path):
    for stem in ("learning-curves", "eval-test-per-class"):
        with Image.open(tracked / f"{stem}.png") as picture:
            assert picture.format == "PNG" and picture.width > 600 and picture.height > 200
        assert (tracked / f"{stem}.svg").read_text().lstrip().startswith("<?xml")
    other = train(workspace, "other", "--set", "optim.epochs=1", "--set", "optim.lr=0.001")
    plotted = cli("intclip-train", "plot", tracked, other, env=workspace["env"])
    overlaid = tracked.parent / "learning-curves.png"
    assert plotted.stdout.split() == [str(overlaid), str(overlaid.with_suffix(".svg"))]
    assert "tracked" in overlaid.with_suffix(".svg").read_text()
    chosen = tmp_path / "both.png"
    cli("intclip-train", "plot", tracked, other, "--out", chosen, env=workspace["env"])
    assert chosen.is_file() and chosen.with_suffix(".svg").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/nonexistent-run"], "/nonexistent-run/metrics.csv: metrics.csv (is it a run"),
        (["RUN", "--out", "curves.pdf"], "--out curves.pdf: name a .png file"),
    ],
)
def test_plot_refuses_what_it_cannot_draw(tmp_path, args, message):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.csv").write_text("epoch,train_loss\n1,0.5\n")
    args = [str(run_dir) if a == "RUN" else a for a in args]
    done = subprocess.run(
        [str(BIN / "intclip-train"), "plot", *args], capture_output=True, text=True, check=False
    )
    assert done.returncode == 2 and message in done.stderr and done.stderr.count("\n") == 1


@pytest.mark.slow
def test_train_log_lines_carry_the_time_and_lr_columns_are_per_group(tracked):
    lines = (tracked / "train.log").read_text().splitlines()
    assert lines and all(STAMP.match(line) for line in lines), lines[:3]
    rows = metrics(tracked)
    groups = [column for column in rows[0] if column.startswith("lr_")]
    assert {"lr_semantic", "lr_semantic.no_decay", "lr_aggregation", "lr_head.no_decay"} <= set(
        groups
    )
    assert "lr" not in rows[0]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(tracked / "tensorboard"))
    board.Reload()
    for row in rows:  # the lr each group used at the epoch's last step, not the next one's
        step = int(row["step"])
        for column in groups:
            tag = f"train/lr/{column.removeprefix('lr_')}"
            used = next(e.value for e in board.Scalars(tag) if e.step == step)
            assert float(row[column]) == pytest.approx(used, rel=1e-6), (tag, step)
    first = next(e.value for e in board.Scalars("train/lr/semantic") if e.step == 1)
    assert first < float(rows[0]["lr_semantic"]) * 10  # a warm-up starts low


@pytest.mark.slow
def test_wandb_offline_holds_the_scalars_config_and_final_report(tracked):
    (run_file,) = (tracked / "wandb").glob("offline-run-*/run-*.wandb")
    written = logged(run_file)
    steps = [entry for entry in written["history"] if "train/loss" in entry]
    assert [int(entry["_step"]) for entry in steps] == list(range(1, 2 * STEPS + 1))
    val_map = [entry["val/mAP"] for entry in written["history"] if "val/mAP" in entry]
    assert val_map == pytest.approx([float(r["val_mAP"]) for r in metrics(tracked)])
    assert written["config"]["optim.lr"] == 0.01 and written["config"]["data.num_classes"] == 4
    assert written["summary"]["best_val_mAP"] == pytest.approx(max(val_map))
    assert written["summary"]["ending"].startswith("finished 2 epochs")


@pytest.mark.slow
def test_mlflow_file_store_holds_the_scalars_config_and_final_report(tracked, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(tracked / "mlruns").as_uri())
    run_id = json.loads((tracked / "run.json").read_text())["trackers"]["mlflow"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "tracked"
    assert run.data.params["optim.lr"] == "0.01" and run.data.params["optim.epochs"] == "2"
    history = client.get_metric_history(run_id, "val/mAP")
    assert [m.value for m in history] == pytest.approx(
        [float(r["val_mAP"]) for r in metrics(tracked)]
    )
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == list(
        range(1, 2 * STEPS + 1)
    )
    assert run.data.metrics["final/best_val_mAP"] == pytest.approx(max(m.value for m in history))
    report = json.loads(Path(client.download_artifacts(run_id, "final_report.json")).read_text())
    assert report["ending"].startswith("finished 2 epochs")


def test_a_missing_tracker_extra_is_one_line_naming_it(workspace, monkeypatch, tmp_path):
    """wandb made unimportable: the run stops before its directory exists."""
    shadow = tmp_path / "shadow"
    (shadow / "wandb").mkdir(parents=True)
    (shadow / "wandb" / "__init__.py").write_text("raise ImportError('No module named wandb')\n")
    env = {**workspace["env"], "PYTHONPATH": str(shadow)}
    done = subprocess.run(
        [str(BIN / "intclip-train"), "run", "--config", str(workspace["config"]),
         "--set", "run_name=no-wandb", "--set", "log.trackers=[wandb]"],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1
    assert "log.trackers: wandb needs the wandb extra: pip install 'intclip[wandb]'" in done.stderr


@pytest.mark.parametrize(
    ("tracker_keys", "expected"),
    [
        ({"tensorboard": True}, ["tensorboard"]),
        ({"tensorboard": False}, []),
        ({"tensorboard": True, "log": {"trackers": ["wandb"]}}, ["wandb", "tensorboard"]),
    ],
)
def test_the_old_tensorboard_key_still_reads(workspace, tmp_path, tracker_keys, expected):
    from intclip.training.config import load_config

    config = yaml.safe_load(workspace["config"].read_text())
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump({**config, **tracker_keys}))
    assert load_config(path).log.trackers == expected


def test_trackers_are_named_once_and_known(workspace):
    from intclip.training.config import load_config
    from pipeline.common.errors import UserError

    with pytest.raises(UserError, match="trackers: name each tracker once"):
        load_config(workspace["config"], ["log.trackers=[wandb, wandb]"])
    with pytest.raises(UserError, match=r"log\.trackers\.0: Input should be 'tensorboard'"):
        load_config(workspace["config"], ["log.trackers=[comet]"])
