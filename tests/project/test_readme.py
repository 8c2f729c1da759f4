"""The README is a front page, and every command on its first screen runs as written.

The commands are read from the README itself (its `sh` blocks above the first-screen marker) and
run in a fresh clone, offline. `make setup` and `make test` are what CI runs (`.ci/run`), so they
are checked there, not here. Where a command needs what this machine cannot have, the test puts
an offline stand-in where the command looks, and the command still runs exactly as written:
- `--pretrained openai` finds random weights of the real architecture in a Hugging Face cache
  (`HF_HOME`, with `HF_HUB_OFFLINE=1`): pretrained CLIP weights cannot be downloaded here;
- `intclip/configs/intentonomy_rn101.yaml` in the clone is replaced by the config `make demo`
  wrote, whose data and CLIP are the demo's: the Intentonomy photos and weights are not here.
  That the shipped config itself is valid is checked on its own.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from intclip.training.config import load_config
from testkit.hub import RN101_OPENAI, hub_cache_with_random_weights
from testkit.paths import ROOT

README = ROOT / "README.md"
FIRST_SCREEN_END = "<!-- the first screen ends here"
MAX_LINES = 250
CI_COMMANDS = ("make setup", "make test")  # what .ci/run runs: checked as CI's own commands
SHIPPED_CONFIG = "intclip/configs/intentonomy_rn101.yaml"


def first_screen_commands() -> list[str]:
    """Every shell command in the `sh` blocks above the marker, `a && b` split in two."""
    text = README.read_text()
    assert FIRST_SCREEN_END in text, "the README lost its first-screen marker"
    screen = text[: text.index(FIRST_SCREEN_END)]
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", screen, flags=re.DOTALL):
        for line in block.splitlines():
            line = line.split(" #", 1)[0].strip()
            commands += [part.strip() for part in line.split("&&") if part.strip()]
    return commands


def test_the_readme_is_a_front_page():
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_LINES
    assert lines.index(next(line for line in lines if FIRST_SCREEN_END in line)) < 80
    for target in re.findall(r"\]\(((?:docs/)?[\w./-]+\.(?:md|svg))\)", README.read_text()):
        assert (ROOT / target).is_file(), f"the README links to a missing {target}"


def test_the_first_screen_shows_install_demo_and_the_three_stages():
    commands = first_screen_commands()
    assert commands[:2] == ["make setup", ". .venv/bin/activate"]
    assert "make demo" in commands
    stages = [c.split()[0:2] for c in commands if c.startswith("intclip-")]
    assert stages == [
        ["intclip-prompts", "build"],
        ["intclip-prompts", "embed"],
        ["intclip-train", "run"],
    ]


def test_ci_runs_the_readme_install_and_test_commands():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert [line for line in ci if line.startswith("make")] == list(CI_COMMANDS)
    assert set(CI_COMMANDS) <= set(first_screen_commands())


def test_the_shipped_config_of_the_first_screen_is_valid():
    config = load_config(ROOT / SHIPPED_CONFIG)
    assert (config.clip.name, config.clip.pretrained) == ("RN101", "openai")


def demo_config_in_place_of_the_shipped_one(clone: Path) -> None:
    shutil.copy(clone / "demo-run" / "demo.yaml", clone / SHIPPED_CONFIG)


STAND_INS: dict[str, Callable[[Path], None]] = {
    f"intclip-train run --config {SHIPPED_CONFIG}": demo_config_in_place_of_the_shipped_one,
}


@pytest.mark.slow
def test_every_first_screen_command_runs_as_written(fresh_clone: Path, tmp_path: Path):
    venv = ROOT / ".venv"
    (fresh_clone / ".venv").symlink_to(venv)
    hub_cache_with_random_weights(tmp_path / "hf", *RN101_OPENAI)
    unset = {"OPENAI_API_KEY", "OPENAI_BASE_URL", "INTCLIP_LLM_MODEL", "INTCLIP_CACHE_DIR"}
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env |= {
        "PYTHONPATH": str(fresh_clone),  # the clone's code, through the checkout's venv
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": "1",
    }
    ran = []
    for command in first_screen_commands():
        if command in CI_COMMANDS:
            continue
        if command == ". .venv/bin/activate":
            assert (fresh_clone / ".venv" / "bin" / "activate").is_file()
            env["PATH"] = f"{fresh_clone / '.venv' / 'bin'}{os.pathsep}{env['PATH']}"
            continue
        if command in STAND_INS:
            STAND_INS[command](fresh_clone)
        done = subprocess.run(
            shlex.split(command),
            cwd=fresh_clone,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        ran.append((command, done.stdout))
    assert [command.split()[:2] for command, _ in ran] == [
        ["make", "demo"],
        ["intclip-prompts", "build"],
        ["intclip-prompts", "embed"],
        ["intclip-train", "run"],
    ]
    demo = ran[0][1]
    assert "SMOKE RUN" in demo
    for step in ("stage 1", "stage 2", "data preflight", "baseline", "training", "evaluation"):
        assert step in demo
    demo_run = fresh_clone / "demo-run"
    assert len(list((demo_run / "runs").glob("demo-*/best.safetensors"))) == 1
    assert (demo_run / "prompts" / "squares.descriptions.json").is_file()
    scores = json.loads((demo_run / "prompts" / "squares.description-scores.json").read_text())
    rows = ["descriptions", "class names", "random words"]
    assert [row["name"] for row in scores["rows"]] == rows  # the three rows, in one report
    assert all(row in demo for row in rows) and "top 2 re-ranked" in demo
    embeddings, run_dir = (Path(out.strip().splitlines()[-1]) for _, out in ran[2:])
    assert embeddings.parent == fresh_clone / "cache" / "embeddings" and embeddings.is_file()
    assert (run_dir / "best.safetensors").is_file()
