"""`make gpu-check` without CUDA: a dry run that skips each CUDA part with one line saying so
and still writes its JSON report and summary table (docs/gpu-check.md)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from testkit.paths import ROOT

CUDA_PARTS = [
    "cuda_tests", "nvjpeg_vs_cpu", "loader_vs_step_and_image_pipeline", "official_epoch_fp16",
    "official_epoch_bf16", "ddp_nccl_1_process",
]  # fmt: skip


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA it is the real check")
def test_the_dry_run_skips_every_cuda_part_with_a_line_and_writes_its_report(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", "--out", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for part in CUDA_PARTS:
        assert (
            f"skip {part}: needs CUDA, and torch.cuda.is_available() is False here"
        ) in done.stdout.splitlines()
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    status = {part["name"]: part["status"] for part in report["parts"]}
    assert report["dry_run"] is True and status["environment"] == "passed"
    assert {status[part] for part in CUDA_PARTS} == {"skipped"}
    assert status["features_throughput"] == "skipped"
    assert "| official_epoch_bf16 | skipped |" in done.stdout
    assert not (tmp_path / "runs").exists()  # a dry run trains nothing
