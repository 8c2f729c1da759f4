"""Files the stages write: created with the user's umask, never half-written."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator

import pytest

from pipeline.files import atomic_write_text, current_umask


@pytest.fixture
def umask() -> Iterator[None]:
    previous = os.umask(0o022)
    yield
    os.umask(previous)


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_new_artifacts_follow_the_umask(tmp_path, umask, mask, mode):
    os.umask(mask)
    assert current_umask() == mask
    atomic_write_text(tmp_path / "out" / "a.json", "{}\n")
    assert stat.S_IMODE((tmp_path / "out" / "a.json").stat().st_mode) == mode
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a.json"]


def test_a_rewrite_keeps_the_files_own_mode(tmp_path, umask):
    path = tmp_path / "a.json"
    path.write_text("old\n")
    path.chmod(0o640)
    atomic_write_text(path, "new\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640 and path.read_text() == "new\n"
