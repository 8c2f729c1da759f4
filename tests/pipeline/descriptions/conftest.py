"""A toy project every `build` test of this folder starts from."""

from __future__ import annotations

from pathlib import Path

import pytest

from testkit.fake_openai import TEST_API_KEY, FakeOpenAI
from testkit.paths import TOY_TAXONOMY


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_openai: FakeOpenAI) -> Path:
    """A toy taxonomy, a cache root and a server, all wired through the environment."""
    taxonomy = tmp_path / "prompts" / "toy.yaml"
    taxonomy.parent.mkdir()
    taxonomy.write_text(TOY_TAXONOMY)
    monkeypatch.setenv("OPENAI_BASE_URL", fake_openai.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", TEST_API_KEY)
    monkeypatch.setenv("INTCLIP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("INTCLIP_LLM_MODEL", raising=False)
    return taxonomy
