"""git_output records what git says and never fails the command that asked."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from pipeline.common import git
from pipeline.common.git import git_output

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


@needs_git
def test_reads_a_checkouts_commit(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "a.txt").write_text("a\n")
    identity = ["-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run(["git", "-C", str(tmp_path), "add", "a.txt"], check=True)
    subprocess.run(["git", "-C", str(tmp_path), *identity, "commit", "-qm", "a"], check=True)
    commit = git_output(tmp_path, "rev-parse", "HEAD")
    assert commit is not None and len(commit.strip()) == 40


@needs_git
def test_outside_a_checkout_is_none(tmp_path: Path) -> None:
    assert git_output(tmp_path, "rev-parse", "HEAD") is None


def test_without_git_is_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(git.shutil, "which", lambda name: None)
    assert git_output(tmp_path, "rev-parse", "HEAD") is None


def test_a_hanging_git_is_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hanging = tmp_path / "git"
    hanging.write_text("#!/bin/sh\nexec sleep 30\n")
    hanging.chmod(0o755)
    monkeypatch.setattr(git.shutil, "which", lambda name: str(hanging))
    monkeypatch.setattr(git, "GIT_TIMEOUT_S", 0.5)
    assert git_output(tmp_path, "status") is None
