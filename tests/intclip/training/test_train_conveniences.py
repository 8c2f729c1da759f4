"""Training conveniences (issue 14): gradient accumulation, precision, early stopping,
`--init-from`, `train.log`, plain progress lines off a terminal, TensorBoard tags, fresh run
directories. Runs use the generated squares and the tiny CLIP of test_train.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import safetensors.torch
import torch
import yaml

from intclip.training.accumulation import AccumulationPlan
from intclip.training.checkpoint import read_checkpoint_header
from pipeline.common.files import sha256_file
from testkit.squares import BIN, cli, metrics, train, trained_tensors

PROGRESS_LINE = re.compile(
    r"^epoch (\d+)/(\d+) step (\d+)/(\d+) (\d+\.\d) img/s loss (\d+\.\d{4})$"
)
STEPS = 128 // 16  # train images / batch size of the workspace config


def failed_run(workspace, *args: object) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(BIN / "intclip-train"), "run", *(str(a) for a in args)],
        capture_output=True, text=True, env=workspace["env"], check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    return result


def resumes_exactly(workspace, name: str, *settings: str) -> Path:
    """Two epochs straight, and one then `--resume`: identical weights. The resumed run."""
    settings = (*settings, "--set", "optim.epochs=2")
    straight = train(workspace, f"straight-{name}", *settings)
    halves = train(workspace, f"halves-{name}", *settings, "--stop-after", 1)
    cli("intclip-train", "run", "--resume", halves, env=workspace["env"])
    one, other = trained_tensors(straight), trained_tensors(halves)
    assert one.keys() == other.keys()
    for tensor in one:
        assert torch.equal(one[tensor], other[tensor]), tensor
    return halves


def test_accumulation_weights_make_one_batch_of_the_effective_size():
    plan = AccumulationPlan(samples=100, batch_size=16, k=3, reduction="mean")
    # micro-batches of 16 x 6 and 4: steps of 48, 48 and the 4 left at the epoch's end
    assert (plan.micro_batches, plan.steps) == (7, 3)
    assert [plan.ends_step(i) for i in range(7)] == [False, False, True] * 2 + [True]
    assert [plan.weight(i, 16) for i in range(6)] == [1 / 3] * 6
    assert plan.weight(6, 4) == 1.0
    uneven = AccumulationPlan(samples=40, batch_size=16, k=3, reduction="mean")
    assert [uneven.weight(i, n) for i, n in enumerate([16, 16, 8])] == [0.4, 0.4, 0.2]
    assert AccumulationPlan(40, 16, 3, "sum").weight(2, 8) == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_accumulating_three_batches_of_16_equals_one_batch_of_48(workspace, reduction):
    """8 micro-batches in steps of 3, 3 and 2 against batches of 48, 48 and 32: equal updates.
    SGD, since Adam turns the rounding noise of a zero gradient (a key bias) into a full step."""
    common = ("--set", "optim.epochs=1", "--set", "augment.enabled=false",
              "--set", f"loss.reduction={reduction}", "--set", "optim.optimizer=sgd")  # fmt: skip
    accumulated = train(
        workspace, f"accumulated-{reduction}", *common, "--set", "optim.grad_accumulation=3"
    )
    large = train(workspace, f"large-{reduction}", *common, "--set", "optim.batch_size=48")
    assert [r["step"] for r in metrics(accumulated)] == [r["step"] for r in metrics(large)] == ["3"]
    one, other = trained_tensors(accumulated), trained_tensors(large)
    for name in one:
        torch.testing.assert_close(one[name], other[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.slow
def test_accumulating_runs_resume_exactly(workspace):
    """Steps never span epochs (8 micro-batches in steps of 3, 3, 2), so `last.pt` is whole."""
    halves = resumes_exactly(workspace, "k3", "--set", "optim.grad_accumulation=3")
    assert [r["step"] for r in metrics(halves)] == ["3", "6"]


@pytest.mark.slow
def test_early_stopping_ends_the_run_normally_and_resumes_exactly(workspace):
    """A learning rate too small to change a float32 weight: val mAP never improves."""
    frozen = ("--set", "optim.lr=1e-12", "--set", "optim.early_stop_patience=2")
    half = train(workspace, "patient", *frozen, "--stop-after", 2)
    assert [r["epochs_since_best"] for r in metrics(half)] == ["0", "1"]
    resumed = cli("intclip-train", "run", "--resume", half, env=workspace["env"])
    assert "stopped early after epoch 3: val mAP has not improved for 2 validations" in (
        resumed.stderr
    )
    assert [r["epochs_since_best"] for r in metrics(half)] == ["0", "1", "2"]
    assert '"epoch": 1' in (half / "best.json").read_text()
    again = cli("intclip-train", "run", "--resume", half, env=workspace["env"])
    assert "stopped early after epoch 3" in again.stderr and len(metrics(half)) == 3

    log = (half / "train.log").read_text()
    # both invocations, appended: the first ended after 2 epochs, the resumed one stopped early
    assert "stopped after epoch 2 of 4; --resume continues" in log
    assert log.index("stopped after epoch 2") < log.index("resuming") < log.index("stopped early")
    assert log.count(f"{half}\n") == 3  # each invocation's last line, the run directory


@pytest.mark.slow
def test_plain_progress_lines_and_train_log(workspace):
    result = cli(
        "intclip-train", "run", "--config", workspace["config"], "--set", "run_name=plain",
        "--set", "optim.epochs=2", "--set", "tensorboard=true", env=workspace["env"],
    )  # fmt: skip
    run_dir = workspace["root"] / "runs" / "plain"
    assert "\r" not in result.stderr and "\n\n" not in result.stderr
    lines = [PROGRESS_LINE.match(line) for line in result.stderr.splitlines()]
    progress = [m.groups()[:4] for m in lines if m]
    assert progress == [("1", "2", str(STEPS), str(STEPS)), ("2", "2", str(STEPS), str(STEPS))]
    assert "finished 2 epochs; best val mAP" in result.stderr
    log = (run_dir / "train.log").read_text()
    unstamped = re.sub(r"(?m)^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", "", log)
    assert unstamped == result.stderr + result.stdout  # one process: each stream's lines in order

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(run_dir / "tensorboard"))
    board.Reload()
    tags = set(board.Tags()["scalars"])
    assert {"train/loss", "train/epoch_loss", "val/mAP", "val/macro_f1"} <= tags
    groups = {g for g in tags if g.startswith("train/lr/")}
    assert {"train/lr/semantic", "train/lr/semantic.no_decay"} <= groups  # one per group
    assert [e.step for e in board.Scalars("train/loss")] == list(range(1, 2 * STEPS + 1))
    assert [e.step for e in board.Scalars("val/mAP")] == [STEPS, 2 * STEPS]


@pytest.mark.slow
def test_init_from_starts_from_the_trained_weights(workspace):
    source = train(workspace, "source", "--set", "optim.epochs=1")
    best = source / "best.safetensors"
    started = cli(
        "intclip-train", "run", "--config", workspace["config"], "--init-from", source,
        "--set", "run_name=started", "--set", "optim.epochs=1", "--set", "optim.lr=1e-12",
        env=workspace["env"],
    )  # fmt: skip
    run_dir = workspace["root"] / "runs" / "started"
    assert f"initialised from {best}" in started.stderr
    recorded = {"path": str(best), "sha256": sha256_file(best)}
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["init_from"] == recorded
    assert read_checkpoint_header(run_dir / "best.safetensors").training["init_from"] == recorded
    assert metrics(run_dir)[0]["step"] == str(STEPS)  # a fresh schedule and epoch count
    loaded = safetensors.torch.load_file(best)
    for name, tensor in trained_tensors(run_dir).items():
        torch.testing.assert_close(tensor, loaded[name], msg=name)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--set", "optim.grad_accumulation=0"), "optim.grad_accumulation: Input should be"),
        (("--set", "optim.grad_accumulation=-2"), "optim.grad_accumulation: Input should be"),
        (("--set", "optim.early_stop_patience=0"), "optim.early_stop_patience: Input should"),
        (("--set", "precision=fp8"), "precision: Input should be 'auto', 'fp32', 'bf16' or"),
        (("--init-from", "/nonexistent/run"), "init_from: /nonexistent/run not found"),
    ],
)
def test_bad_settings_are_refused_before_any_run_directory(workspace, args, expected):
    before = set((workspace["root"] / "runs").glob("*"))
    result = failed_run(workspace, "--config", workspace["config"], "--set", "run_name=bad", *args)
    assert expected in result.stderr
    assert set((workspace["root"] / "runs").glob("*")) == before


def test_init_from_refuses_foreign_files_and_resume(workspace, tmp_path):
    foreign = tmp_path / "foreign.safetensors"
    safetensors.torch.save_file({"x": torch.zeros(2)}, foreign)
    result = failed_run(workspace, "--config", workspace["config"], "--init-from", foreign)
    assert "not an IntCLIP checkpoint" in result.stderr
    empty = tmp_path / "empty-run"
    empty.mkdir()
    result = failed_run(workspace, "--config", workspace["config"], "--init-from", empty)
    assert "is a directory without best.safetensors" in result.stderr
    result = failed_run(workspace, "--resume", empty, "--init-from", foreign)
    assert "--init-from starts a new run" in result.stderr


@pytest.mark.slow
def test_fp16_on_cpu_keeps_its_loss_scaler_and_resumes_exactly(workspace):
    halves = resumes_exactly(workspace, "fp16", "--set", "precision=fp16")
    assert torch.load(halves / "last.pt", weights_only=True)["scaler"]["scale"] > 0


@pytest.mark.slow
def test_bf16_autocast_on_cpu_trains(workspace):
    run_dir = train(workspace, "bf16", "--set", "precision=bf16", "--set", "optim.epochs=1")
    assert torch.load(run_dir / "last.pt", weights_only=True)["scaler"] is None
    assert float(metrics(run_dir)[0]["train_loss"]) > 0


@pytest.mark.slow
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp16_trains_on_cuda(workspace):
    run_dir = train(
        workspace, "cuda-fp16", "--set", "device=cuda", "--set", "precision=fp16",
        "--set", "optim.epochs=1",
    )  # fmt: skip
    assert float(metrics(run_dir)[0]["train_loss"]) > 0


@pytest.mark.slow
def test_runs_without_a_name_get_a_fresh_directory_each(workspace, monkeypatch):
    """Two runs in the same second (the time in the default name) do not collide."""
    from datetime import datetime

    import intclip.training.run_dir
    from intclip.training.config import load_config
    from intclip.training.loop import train as train_in_process

    class Frozen(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2026, 1, 2, 3, 4, 5)

    monkeypatch.setattr(intclip.training.run_dir, "datetime", Frozen)
    config = load_config(workspace["config"], ["optim.epochs=1"])
    runs = [train_in_process(config, "same-second") for _ in range(2)]
    base = workspace["root"] / "runs" / "same-second-20260102-030405"
    assert runs == [base, base.with_name(base.name + "-2")]
    assert all((run / "best.safetensors").is_file() for run in runs)
