"""A fresh clone of the checkout, for tests of what a newcomer meets."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from testkit.paths import ROOT


@pytest.fixture
def fresh_clone(tmp_path) -> Path:
    """A clone of this repository's committed state: an empty cache, nothing built."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs git and a git checkout")
    clone = tmp_path / "clone"
    subprocess.run(
        ["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(clone)],
        check=True,
        capture_output=True,
    )
    return clone
