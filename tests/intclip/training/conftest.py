"""The squares workspace, built once per test module that asks for it."""

from __future__ import annotations

from pathlib import Path

import pytest

from testkit.squares import make_workspace


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_workspace(tmp_path_factory.mktemp("train"))


@pytest.fixture
def cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A fresh cache for the test, for in-process commands."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("INTCLIP_CACHE_DIR", str(folder))
    return folder
