"""3. CLI start: `intclip-prompts --help` and `validate` vs `python -c "import torch"`; and what
a command that needs torch pays before its work, with the collector paused or not."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

from bench.registry import Comparison, Settings, Side, Target, measure
from bench.workload import ROOT, prompts_cli
from pipeline.common.collector import SKIPPED_OPTIONAL_IMPORTS, TENSOR_MODULES


def _seconds(command: list[str], repeats: int) -> float:
    """The median wall-clock time of `command`."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


@measure(
    "cli_start",
    "CLI start vs importing torch",
    defaults={"repeats": 3},
    quick={"repeats": 1},
    missed="--help and validate import none of torch, torchvision, open_clip, openai, numpy "
    "or pandas (tests/test_front_door.py keeps it so): what is left is Python's start-up and "
    "typer, rich, pydantic and yaml, about 0.2 s on an idle core. On a busy machine the "
    "fixed cost of starting any interpreter weighs more against an `import torch` that the "
    "page cache keeps warm; a miss here comes from that, and from nothing either command "
    "could still drop but typer's rich help rendering (0.03 s).",
    order=3,
)
def run(settings: Settings) -> list[Comparison]:
    repeats = settings["repeats"]
    torch_import = Side(
        "python -c 'import torch'", _seconds([sys.executable, "-c", "import torch"], repeats), "s"
    )
    commands = {
        "intclip-prompts --help": ["--help"],
        "intclip-prompts validate": ["validate", "--taxonomy", "prompts/intentonomy.yaml"],
    }
    comparisons = [
        Comparison(
            label,
            Side(label, _seconds(prompts_cli(*arguments), repeats), "s"),
            torch_import,
            Target("<=", 0.3),
            f"median of {repeats} fresh interpreters each",
        )
        for label, arguments in commands.items()
    ]
    stack = ", ".join(TENSOR_MODULES)
    paused = (
        "from pipeline.common.collector import TENSOR_MODULES, import_heavy\n"
        "import_heavy(TENSOR_MODULES)"
    )
    comparisons.append(
        Comparison(
            "start of a tensor command",
            Side(
                f"collector paused, {', '.join(SKIPPED_OPTIONAL_IMPORTS)} skipped",
                _seconds([sys.executable, "-c", paused], repeats),
                "s",
            ),
            Side(
                f"import {stack}", _seconds([sys.executable, "-c", f"import {stack}"], repeats), "s"
            ),
            note="what every command that needs torch pays before its work (`tensor_command`): "
            f"report only, ratio < 1 is faster; median of {repeats} fresh interpreters each",
        )
    )
    return comparisons
