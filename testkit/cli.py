"""Running the console scripts from tests: in-process, or as a process to interrupt."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable

import pytest

CliResult = tuple[int, str, str]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
"""Two processes on this machine; `--standalone` rendezvouses on a free port, so runs at once
(pytest-xdist's workers, other checkouts' tests) never join each other's process groups."""


def invoke(
    main: Callable[[list[str]], None], capsys: pytest.CaptureFixture[str], *args
) -> CliResult:
    """Run a console-script entry point in-process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as stopped:
        main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return stopped.value.code, captured.out, captured.err


def ok(result: CliResult) -> str:
    """The standard output of a command that must have succeeded."""
    code, out, err = result
    assert code == 0, err
    return out


def interrupt_when(
    command: list[str], ready: Callable[[], bool], stop: int, env: dict[str, str], limit: float
) -> tuple[int, str]:
    """Start `command`, send it `stop` once `ready()` holds (or `limit` seconds passed, a bound
    on waiting, never an expectation of speed); (exit code, stderr)."""
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + limit
    while not ready() and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(stop)
    try:
        _, err = process.communicate(timeout=limit)
    finally:
        process.kill()
    return process.returncode, err
