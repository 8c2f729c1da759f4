"""Fixtures shared by the test files."""

from __future__ import annotations

import hashlib
import subprocess
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pytest

import intclip.cli
import pipeline.cli
import pipeline.review_cli
from pipeline.descriptions import (
    ClassDescriptions,
    DescriptionsFile,
    GeneratorInfo,
    TaxonomyRef,
    normalised,
)
from testkit.fake_openai import FakeOpenAI

TOY_TAXONOMY = (Path(__file__).parent / "fixtures" / "taxonomies" / "toy.yaml").read_text()
"""Two coarse nodes, three fine classes (cats, dogs | beach): every line number is known."""

CliResult = tuple[int, str, str]
NO_HASH = "0" * 64


def descriptions_document(
    texts: dict[str, list[str]], paths: dict[str, list[str]] | None = None
) -> DescriptionsFile:
    """A descriptions file without an LLM: class ids -> texts, labels in order of the dict."""
    return DescriptionsFile(
        taxonomy=TaxonomyRef(name="toy", sha256=NO_HASH),
        generator=GeneratorInfo(
            model="m",
            template_sha256=NO_HASH,
            params={"num_descriptions": len(next(iter(texts.values()), [""])), "min_words": 1},
        ),
        classes=[
            ClassDescriptions(
                label=label,
                id=name,
                path=(paths or {}).get(name, ["Animals", name.title()]),
                descriptions=found,
                inputs_sha256=NO_HASH,
            )
            for label, (name, found) in enumerate(texts.items())
        ],
    )


def invoke(
    main: Callable[[list[str]], None], capsys: pytest.CaptureFixture[str], *args
) -> CliResult:
    """Run a console-script entry point in-process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as stopped:
        main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return stopped.value.code, captured.out, captured.err


def interrupt_when(
    command: list[str], ready: Callable[[], bool], stop: int, env: dict[str, str], limit: float
) -> tuple[int, str]:
    """Start `command`, send it `stop` once `ready()` holds (or `limit` seconds passed, a bound
    on waiting, never an expectation of speed); (exit code, stderr)."""
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + limit
    while not ready() and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(stop)
    try:
        _, err = process.communicate(timeout=limit)
    finally:
        process.kill()
    return process.returncode, err


def word_embedder(texts: list[str]) -> np.ndarray:
    """A bag of hashed words, unit rows: what `build` reviews with in tests, so that not every
    build test loads sentence-transformers."""
    rows = np.full((len(texts), 65), 0.1)
    for row, text in enumerate(texts):
        for word in normalised(text).split():
            rows[row, int(hashlib.sha256(word.encode()).hexdigest(), 16) % 64] += 1.0
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.fixture(autouse=True)
def light_review(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline.review_cli, "minilm_embedder", lambda: word_embedder)


@pytest.fixture
def prompts_cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """`intclip-prompts ARGS...` -> (exit code, stdout, stderr)."""
    return partial(invoke, pipeline.cli.main, capsys)


@pytest.fixture
def train_cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """`intclip-train ARGS...` -> (exit code, stdout, stderr)."""
    return partial(invoke, intclip.cli.main, capsys)


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    """A started loopback OpenAI-compatible server, shut down after the test."""
    with FakeOpenAI() as server:
        yield server


# ---- tiny CLIP fixtures (issue 4, the model library); helpers live in tests/tiny_clip.py ----


@pytest.fixture(scope="session")
def tiny_clip_files(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A random tiny CLIP per tower ("resnet", "vit") saved once as a .safetensors file."""
    from tiny_clip import TINY_CLIP_CONFIGS, save_random_clip

    folder = tmp_path_factory.mktemp("tiny-clip")
    return {
        tower: save_random_clip(config, folder / f"{tower}.safetensors", seed=0)
        for tower, config in TINY_CLIP_CONFIGS.items()
    }


@pytest.fixture(params=["resnet", "vit"])
def tiny_clip(request: pytest.FixtureRequest, tiny_clip_files: dict):
    """A fresh frozen tiny CLIP loaded from its file, once per tower type."""
    from tiny_clip import TINY_CLIP_CONFIGS

    from pipeline.clip import load_clip

    return load_clip(str(TINY_CLIP_CONFIGS[request.param]), tiny_clip_files[request.param])


# ---- end of tiny CLIP fixtures ----
