"""Ctrl-C or SIGTERM during `intclip-train run` (issue 24): one line on stderr with where the
run stopped and the exact command that continues it; a run stopped in its first epoch resumes
from its start and ends exactly as an uninterrupted run. Runs use the generated squares."""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import sys

import pytest
import torch

from testkit.cli import interrupt_when
from testkit.squares import BIN, metrics, train, trained_tensors


@pytest.fixture(scope="module")
def straight(workspace):
    return train(workspace, "uninterrupted", "--set", "optim.epochs=2")


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_run_stopped_in_epoch_1_says_how_to_continue_and_ends_as_if_never_stopped(
    workspace, straight, stop
):
    run_dir = workspace["root"] / "runs" / f"stopped-{stop.name}"
    log = run_dir / "train.log"
    command = [str(BIN / "intclip-train"), "run", "--config", str(workspace["config"]),
               "--set", f"run_name={run_dir.name}", "--set", "optim.epochs=2"]  # fmt: skip
    code, err = interrupt_when(
        command,
        lambda: log.is_file() and "training epochs 1 to 2 of 2" in log.read_text(),
        stop,
        workspace["env"],
        limit=300,
    )
    assert code == 130, err
    last = err.strip().splitlines()[-1]
    assert re.fullmatch(
        rf"error: interrupted in epoch 1/2 at step \d/8; {re.escape(str(run_dir))}/last\.pt "
        rf"holds the run's start; continue with: intclip-train run --resume "
        rf"{re.escape(shlex.quote(str(run_dir)))}",
        last,
    ), err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [last]
    assert metrics(run_dir) == []

    resume = shlex.split(last.split("continue with: ")[1])
    done = subprocess.run(
        [str(BIN / resume[0]), *resume[1:]], capture_output=True, text=True,
        env=workspace["env"], check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    one, other = trained_tensors(straight), trained_tensors(run_dir)
    for name in one:
        assert torch.equal(one[name], other[name]), name
    assert [r["val_mAP"] for r in metrics(run_dir)] == [r["val_mAP"] for r in metrics(straight)]
    outcomes = [i["outcome"] for i in json.loads((run_dir / "run.json").read_text())["invocations"]]
    assert outcomes == ["interrupted", "finished"]


def test_run_without_arguments_is_answered_before_torch_is_imported():
    probe = (
        "import sys\n"
        "from intclip.cli.main import main\n"
        "try:\n    main(['run'])\n"
        "except SystemExit as end:\n    print(end.code, 'torch' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=False
    )
    assert done.stdout.split() == ["2", "False"]
    assert done.stderr == (
        "error: give --config F for a new run, or --resume RUN_DIR to continue one\n"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--config", "/nowhere.yaml"], "/nowhere.yaml: config file not found"),
        (["run", "--resume", "/nowhere"], "/nowhere: no last.pt to resume from"),
        (["eval", "--run", "/nowhere"], "/nowhere: run directory not found"),
        (["check-data", "--config", "/nowhere.yaml"], "/nowhere.yaml: config file not found"),
    ],
)
def test_commands_refuse_missing_paths_before_importing_torch(args, message):
    probe = (
        "import sys\n"
        "from intclip.cli.main import main\n"
        f"try:\n    main({args!r})\n"
        "except SystemExit as end:\n    print(end.code, 'torch' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=False
    )
    assert done.stdout.split() == ["2", "False"] and done.stderr == f"error: {message}\n"
