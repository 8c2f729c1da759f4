"""The commands a newcomer runs first: fast (no torch, openai or numpy), offline, and needing no
key.

Each runs in a subprocess through `testkit/light_entry.py`, which refuses the network and reports
which heavy libraries were imported.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from testkit.paths import ROOT

ENTRY = ROOT / "testkit" / "light_entry.py"
PROMPTS = "pipeline.cli.main:main"
TRAIN = "intclip.cli.main:main"
LIGHT = "heavy modules: []"


def offline_env(root: Path) -> dict[str, str]:
    """The environment of a newcomer: no key, no server, no model, the default cache."""
    unset = {"OPENAI_API_KEY", "OPENAI_BASE_URL", "INTCLIP_LLM_MODEL", "INTCLIP_CACHE_DIR"}
    env = {k: v for k, v in os.environ.items() if k not in unset}
    return {**env, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1"}


def run(root: Path, entry: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ENTRY), entry, *map(str, args)],
        cwd=root,
        env=offline_env(root),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("entry", "args"),
    [
        (PROMPTS, ["--help"]),
        (TRAIN, ["--help"]),
        (PROMPTS, ["validate", "--taxonomy", "prompts/intentonomy.yaml"]),
        (PROMPTS, ["diff", *["prompts/intentonomy.descriptions.json"] * 2]),
        (PROMPTS, ["build", "--taxonomy", "prompts/intentonomy.yaml", "--check"]),
        (PROMPTS, ["embed", "--help"]),
        (TRAIN, ["run", "--help"]),
        (TRAIN, ["score", "--help"]),
    ],
    ids=[
        *("prompts-help", "train-help", "validate", "diff", "build-check"),
        *("embed-help", "run-help", "score-help"),
    ],
)
def test_commands_without_tensors_import_no_heavy_library(entry, args):
    done = run(ROOT, entry, *args)
    assert done.returncode == 0, done.stderr
    assert LIGHT in done.stderr


@pytest.mark.slow
def test_locked_build_on_a_fresh_clone_needs_no_key_and_sends_nothing(fresh_clone):
    done = run(fresh_clone, PROMPTS, "build", "--taxonomy", "prompts/intentonomy.yaml")
    assert done.returncode == 0, done.stderr
    expected = "28 classes: 0 up to date, 28 edited in review (kept), 0 from the LLM cache, 0 asked"
    assert expected in done.stderr
    assert "unchanged" in done.stdout
    assert LIGHT in done.stderr  # nor did it start a local server or load a model
    assert not (fresh_clone / "cache" / "llm-server").exists()
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"],
        cwd=fresh_clone,
        capture_output=True,
        text=True,
        check=True,
    )
    assert status.stdout == ""


def test_a_command_skips_the_last_collection_at_exit():
    """Everything left at exit is frozen first: Python's last collection would only walk the
    objects that the process is about to free anyway (openai's models after a build)."""
    report = "atexit.register(lambda: print('frozen', gc.get_freeze_count(), file=sys.stderr))"
    code = (
        f"import atexit, gc, sys; {report}; from pipeline.cli.main import main; main(sys.argv[1:])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "validate", "--taxonomy", "prompts/intentonomy.yaml"],
        cwd=ROOT,
        env=offline_env(ROOT),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stderr.split("frozen ")[1].split()[0]) > 0
