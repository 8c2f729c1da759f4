"""3. CLI start: `intclip-prompts --help` and `validate` vs `python -c "import torch"`."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.registry import Comparison, Settings, Side, Target, measure

ROOT = Path(__file__).resolve().parents[2]
PROMPTS_CLI = "import sys; from pipeline.cli import main; main(sys.argv[1:])"


def _seconds(arguments: list[str], repeats: int) -> float:
    """The median wall-clock time of a fresh interpreter running `arguments`."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, *arguments], cwd=ROOT, env=env, check=True, capture_output=True
        )
        times.append(time.perf_counter() - started)
    return statistics.median(times)


@measure(
    "cli_start",
    "CLI start vs importing torch",
    defaults={"repeats": 3},
    quick={"repeats": 1},
    missed="The CLIs import open_clip, torch and torchvision at start for every command; "
    "importing them only inside the commands that need tensors (issue 15's Startup section, "
    "branch frontdoor) brings --help and validate to plain-Python start-up times.",
    order=3,
)
def run(settings: Settings) -> list[Comparison]:
    repeats = settings["repeats"]
    torch_import = Side("python -c 'import torch'", _seconds(["-c", "import torch"], repeats), "s")
    commands = {
        "intclip-prompts --help": ["--help"],
        "intclip-prompts validate": ["validate", "--taxonomy", "prompts/intentonomy.yaml"],
    }
    return [
        Comparison(
            label,
            Side(label, _seconds(["-c", PROMPTS_CLI, *arguments], repeats), "s"),
            torch_import,
            Target("<=", 0.3),
            f"median of {repeats} fresh interpreters each",
        )
        for label, arguments in commands.items()
    ]
