"""The layout's rule, checked by import-linter from pyproject.toml: each subpackage imports only
the ones below it, `pipeline` never imports `intclip`, and no package's modules import in a circle.

The check runs on the real tree, then on copies with one deliberate breach each, to show that
it would catch one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from testkit.paths import ROOT

LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """import-linter over the packages found in `root` (first on the path), with its config."""
    return subprocess.run(
        [str(LINT_IMPORTS), str(root / "pyproject.toml"), "--no-cache", "--no-logo"],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_tree_keeps_every_layer_contract():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


@pytest.fixture
def copy_of_tree(tmp_path: Path) -> Path:
    for package in ("intclip", "pipeline"):
        shutil.copytree(
            ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    ("module", "breach", "contract", "culprit"),
    [
        # the data layer reaching up into training
        (
            "intclip/data/shrink.py",
            "import intclip.training.loop",
            "Data flow",
            "intclip.data.shrink -> intclip.training.loop",
        ),
        # the CLIP loader reaching up into the descriptions stage
        (
            "pipeline/clip/hub.py",
            "import pipeline.descriptions.build",
            "Data flow",
            "pipeline.clip.hub -> pipeline.descriptions.build",
        ),
        # the offline stages importing the training side
        (
            "pipeline/common/retry.py",
            "import intclip.metrics.multilabel",
            "never import",
            "pipeline.common.retry -> intclip.metrics.multilabel",
        ),
        # two modules of one package importing each other
        (
            "intclip/data/crops.py",
            "import intclip.data.image_pipeline",
            "No import circle",
            ".crops -> .image_pipeline",
        ),
    ],
)
def test_a_deliberate_breach_fails_the_check(
    copy_of_tree: Path, module: str, breach: str, contract: str, culprit: str
):
    target = copy_of_tree / module
    target.write_text(target.read_text() + f"\n{breach}  # noqa\n")
    result = lint_imports(copy_of_tree)
    assert result.returncode != 0, result.stdout
    broken = result.stdout[result.stdout.index("Broken contracts") :]
    assert contract in broken
    assert culprit in broken
