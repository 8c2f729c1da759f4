"""The default cache root: the working directory's, or its intclip checkout's; never the
installed package's directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.common.files import cache_root


@pytest.fixture
def elsewhere(tmp_path, monkeypatch) -> Path:
    monkeypatch.delenv("INTCLIP_CACHE_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_outside_a_checkout_the_cache_is_in_the_working_directory(elsewhere, prompts_cli):
    (elsewhere / "pyproject.toml").write_text('[project]\nname = "someone-else"\n')
    assert cache_root() == elsewhere / "cache"
    code, out, _ = prompts_cli("cache", "ls")
    assert code == 0 and str(elsewhere / "cache" / "embeddings") in out


def test_inside_a_checkout_the_cache_is_the_projects(elsewhere, monkeypatch):
    (elsewhere / "pyproject.toml").write_text('[project]\nname = "intclip"\n')
    inner = elsewhere / "prompts" / "sub"
    inner.mkdir(parents=True)
    monkeypatch.chdir(inner)
    assert cache_root() == elsewhere / "cache"


def test_the_option_and_the_environment_come_first(elsewhere, monkeypatch):
    monkeypatch.setenv("INTCLIP_CACHE_DIR", str(elsewhere / "env"))
    assert cache_root() == elsewhere / "env"
    assert cache_root(elsewhere / "flag") == elsewhere / "flag"
