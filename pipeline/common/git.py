"""Reading facts from a git checkout for the record (commits, dirty state), never failing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

GIT_TIMEOUT_S = 10.0
"""A git that hangs (a network file system, a lock) must not hang the command that asked."""


def git_output(directory: Path, *args: str) -> str | None:
    """The standard output of `git -C directory args...`; None without git, on a non-zero exit or
    past the deadline, because provenance is worth recording but never worth failing over."""
    git = shutil.which("git")
    if git is None:
        return None
    try:
        done = subprocess.run(
            [git, "-C", str(directory), *args],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None
