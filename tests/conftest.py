"""Fixtures shared by every test folder; the helpers they use live in `testkit`."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest

import intclip.cli.main
import pipeline.cli.main
import pipeline.cli.review
from testkit.cli import CliResult, invoke
from testkit.descriptions import word_embedder
from testkit.fake_openai import FakeOpenAI
from testkit.paths import TOY_TAXONOMY


def pytest_sessionstart(session: pytest.Session) -> None:
    """Commands the tests start get Ctrl-C as from a terminal, however the suite was started.
    A shell starts a background job with SIGINT ignored, Python keeps an ignored SIGINT
    ignored, and so would every command started from here: the Ctrl-C tests would then wait
    for an interrupt that never comes. A handled signal is reset to its default on exec."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def light_review(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline.cli.review, "minilm_embedder", lambda: word_embedder)


@pytest.fixture
def prompts_cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """`intclip-prompts ARGS...` -> (exit code, stdout, stderr)."""
    return partial(invoke, pipeline.cli.main.main, capsys)


@pytest.fixture
def train_cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """`intclip-train ARGS...` -> (exit code, stdout, stderr)."""
    return partial(invoke, intclip.cli.main.main, capsys)


@pytest.fixture
def toy_taxonomy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The toy taxonomy at tmp_path/prompts/toy.yaml, a cache root under tmp_path and an API
    key, for a `build` against a loopback server."""
    taxonomy = tmp_path / "prompts" / "toy.yaml"
    taxonomy.parent.mkdir()
    taxonomy.write_text(TOY_TAXONOMY)
    monkeypatch.setenv("INTCLIP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    return taxonomy


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    """A started loopback OpenAI-compatible server, shut down after the test."""
    with FakeOpenAI() as server:
        yield server


@pytest.fixture(scope="session")
def tiny_clip_files(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A random tiny CLIP per tower ("resnet", "vit") saved once as a .safetensors file."""
    from testkit.tiny_clip import TINY_CLIP_CONFIGS, save_random_clip

    folder = tmp_path_factory.mktemp("tiny-clip")
    return {
        tower: save_random_clip(config, folder / f"{tower}.safetensors", seed=0)
        for tower, config in TINY_CLIP_CONFIGS.items()
    }


@pytest.fixture(params=["resnet", "vit"])
def tiny_clip(request: pytest.FixtureRequest, tiny_clip_files: dict):
    """A fresh frozen tiny CLIP loaded from its file, once per tower type."""
    from pipeline.clip.loading import load_clip
    from testkit.tiny_clip import TINY_CLIP_CONFIGS

    return load_clip(str(TINY_CLIP_CONFIGS[request.param]), tiny_clip_files[request.param])
