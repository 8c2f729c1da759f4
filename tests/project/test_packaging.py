"""A wheel of intclip works without the checkout: it carries `prompts/` (the prompt templates,
Intentonomy's taxonomy and descriptions) as `pipeline/bundled_prompts`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from testkit.paths import ROOT, TOY_TAXONOMY

NOT_SOURCE = (".git", ".venv", "cache", "build", "*.egg-info", "__pycache__", "runs", "demo-run")


def run(command: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """intclip built into a wheel from a copy of the source and installed into a folder."""
    folder = tmp_path_factory.mktemp("wheel")
    source = folder / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_SOURCE), symlinks=True)
    wheels = folder / "wheels"
    built = run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(source)],
        folder,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    target = folder / "site"
    wheel = next(wheels.glob("intclip-*.whl"))
    done = run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                str(wheel)], folder)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return target


@pytest.mark.slow
def test_the_wheel_carries_the_templates_and_intentonomys_files(installed: Path) -> None:
    bundled = installed / "pipeline" / "bundled_prompts"
    for name in ("templates/system.txt", "templates/user.txt", "intentonomy.yaml"):
        assert (bundled / name).read_bytes() == (ROOT / "prompts" / name).read_bytes()
    assert (installed / "intclip" / "configs" / "intentonomy_rn101_official.yaml").is_file()


@pytest.mark.slow
def test_an_installed_wheel_builds_and_knows_intentonomy_away_from_the_checkout(
    installed: Path, tmp_path: Path
) -> None:
    taxonomy = tmp_path / "mine" / "toy.yaml"
    taxonomy.parent.mkdir()
    taxonomy.write_text(TOY_TAXONOMY)
    code = (
        "import sys, pipeline\n"
        "from intclip.metrics.report import is_intentonomy, _intentonomy_ids\n"
        "print(pipeline.__file__, is_intentonomy(_intentonomy_ids()), len(_intentonomy_ids()))\n"
        "from pipeline.cli.main import main\n"
        "main(sys.argv[1:])\n"
    )
    arguments = ["build", "--taxonomy", str(taxonomy), "--model", "m", "--dry-run"]
    done = run([sys.executable, "-c", code, *arguments], tmp_path, PYTHONPATH=str(installed))

    assert done.returncode == 0, done.stderr
    location, intentonomy, classes = done.stdout.split()[:3]
    assert Path(location).is_relative_to(installed)
    assert (intentonomy, classes) == ("True", "28")
