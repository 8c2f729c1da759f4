"""The torch-free CLIP tokenizer gives exactly open_clip's ids, so the 77-token rule is CLIP's."""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import cache

import pytest
from open_clip.tokenizer import SimpleTokenizer

from pipeline.clip import tokens as clip_tokens
from pipeline.clip.tokens import clip_token_count, clip_tokenizer
from pipeline.descriptions.format import read_descriptions
from testkit.paths import ROOT

PIECES = [
    "A", "photo", "of", "people", "hugging", "at", "the", "beach", ",", ".", "'s", "don't",
    "we'll", "I'm", "they've", "co-workers", "3", "42", "2024", "3.14", "café", "naïve",
    "Ünïcödé", "東京", "日本語の写真", "😀", "🎉🎉", "&amp;", "&amp;amp;", "&lt;b&gt;", "ﬁne",
    "\u00e9t\u00e9", "e\u0301te\u0301", "\uff21\uff42\uff43", "  ", "\t", "\n", "<start_of_text>",
    "<END_OF_TEXT>", "Supercalifragilisticexpialidocious", "HTTP://x.y/z?q=1", "$$$", "—",
    "«quoted»", "smile:)", "a_b_c", "ALLCAPS", "MiXeD", "x" * 40, "ü" * 9, "Ωμέγα", "Привет",
]  # fmt: skip


def random_texts(count: int, seed: int = 0) -> list[str]:
    """Sentences of words, punctuation, digits, accents, scripts, emoji and HTML entities."""
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        words = rng.choices(PIECES, k=rng.randint(1, 30))
        joiners = rng.choices(["", " ", "  ", "-"], weights=[1, 8, 1, 1], k=len(words))
        texts.append("".join(j + w for j, w in zip(joiners, words, strict=True)))
    return texts


def committed_descriptions() -> list[str]:
    document = read_descriptions(ROOT / "prompts" / "intentonomy.descriptions.json")
    return [text for entry in document.classes for text in entry.descriptions]


@pytest.fixture(scope="module")
def reference() -> SimpleTokenizer:
    return SimpleTokenizer()


def test_ids_equal_open_clip_on_many_strings(reference):
    texts = committed_descriptions() + random_texts(1500) + PIECES + [""]
    for text in texts:
        assert clip_tokenizer().encode(text) == reference.encode(text), repr(text)


def test_count_includes_start_and_end(reference):
    text = "A family shares a meal on the porch at sunset."
    assert clip_token_count(text) == len(reference.encode(text)) + 2
    assert clip_token_count("") == 2


def test_threads_asking_at_once_share_one_tokenizer(monkeypatch):
    """`build`'s threads check their first answers together: one tokenizer is built, not one
    per thread."""
    built = []

    @cache
    def load() -> clip_tokens.ClipTokenizer:
        built.append(1)
        return clip_tokens.ClipTokenizer(clip_tokens.vocabulary_file())

    monkeypatch.setattr(clip_tokens, "_load_tokenizer", load)
    start = threading.Barrier(8)

    def first_count() -> int:
        start.wait()
        return clip_token_count("people smiling together")

    with ThreadPoolExecutor(8) as pool:
        counts = list(pool.map(lambda _: first_count(), range(8)))
    assert counts == [5] * 8 and len(built) == 1
