"""`make demo` runs all three stages end to end and says it is a smoke run."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_runs_every_stage(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "intclip.demo", str(tmp_path / "demo")],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.stdout.startswith("SMOKE RUN")
    for step in ("stage 1", "stage 2", "data preflight", "baseline", "training", "evaluation"):
        assert f"==> {step}" in result.stdout or step in result.stdout
    assert (tmp_path / "demo" / "runs" / "demo" / "best.safetensors").is_file()
    assert (tmp_path / "demo" / "prompts" / "squares.descriptions.json").is_file()
