"""Files the stages write: created with the user's umask, never half-written."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator

import pytest

from pipeline.common.errors import UserError
from pipeline.common.files import atomic_write_text, current_umask
from testkit.paths import TOY_TAXONOMY


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


def test_disk_full_is_one_line_and_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "a.json"
    path.write_text("previous\n")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(UserError) as info:
        atomic_write_text(path, "new\n")
    assert str(info.value) == f"{path}: cannot write (No space left on device)"
    assert info.value.exit_code == 2
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"] and path.read_text() == "previous\n"


def test_a_file_where_a_directory_should_be(prompts_cli, fake_openai, tmp_path, monkeypatch):
    monkeypatch.setenv("INTCLIP_CACHE_DIR", str(tmp_path / "cache"))
    taxonomy = tmp_path / "toy.yaml"
    taxonomy.write_text(TOY_TAXONOMY)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file\n")
    out = blocker / "sub" / "x.json"
    code, stdout, err = prompts_cli(
        "build", "--taxonomy", taxonomy, "--model", "m", "--base-url", fake_openai.base_url,
        "--out", out,
    )  # fmt: skip
    assert code == 2 and stdout == ""
    assert err.splitlines()[-1] == f"error: {out}: cannot write (Not a directory)"
    assert blocker.read_text() == "a file\n"
