"""Text features cut at the batch's longest text: the same as open_clip's, for less work."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from intclip.model.prompts import PromptConfig, PromptedClassText, read_class_texts
from intclip.model.text_tower import FrozenTextTower
from pipeline.clip.loading import LoadedClip, load_clip
from pipeline.clip.text_features import encode_token_ids, needed_length
from pipeline.descriptions.format import write_descriptions
from pipeline.embeddings.cache import compute_embeddings
from testkit.descriptions import descriptions_document
from testkit.tiny_clip import TINY_CLIP_CONFIGS

TEXTS = [
    "A cat.",
    "Waves break on the sand while gulls circle over the old harbour at dawn!",
    "Two dogs share a bowl in the kitchen.",
    "Sun",
]


@contextmanager
def transformer_lengths(clip: LoadedClip) -> Iterator[list[int]]:
    """The sequence length of each call of the text transformer while in the block."""
    lengths: list[int] = []
    handle = clip.module.transformer.register_forward_pre_hook(
        lambda _module, arguments: lengths.append(arguments[0].shape[1])
    )
    try:
        yield lengths
    finally:
        handle.remove()


def longest(clip: LoadedClip, texts: list[str]) -> int:
    """Tokens of the longest text, start and end included."""
    return max(len(clip.tokenizer.encode(text)) + 2 for text in texts)


@torch.no_grad()
def test_cut_features_are_open_clips_and_skip_the_padding(tiny_clip: LoadedClip) -> None:
    tokens = tiny_clip.tokenizer(TEXTS)
    expected = tiny_clip.module.encode_text(tokens, normalize=True)
    with transformer_lengths(tiny_clip) as lengths:
        features = encode_token_ids(tiny_clip.module, tokens)

    torch.testing.assert_close(features, expected, rtol=0, atol=1e-5)
    assert lengths == [longest(tiny_clip, TEXTS)]
    assert lengths[0] < tokens.shape[1]


def test_the_prompt_tower_is_open_clips_at_full_length_and_cut(tiny_clip: LoadedClip) -> None:
    tower = FrozenTextTower(tiny_clip)
    tokens = tiny_clip.tokenizer(TEXTS)
    expected = tiny_clip.module.encode_text(tokens)
    cut = tokens[:, : needed_length(tower, tokens)]
    embedded = tower.embed(cut).requires_grad_(True)

    with transformer_lengths(tiny_clip) as lengths:
        features = tower(embedded, cut)
        features.sum().backward()
        with torch.no_grad():
            full = tower(tower.embed(tokens), tokens)

    torch.testing.assert_close(features.detach(), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(full, expected, rtol=0, atol=1e-5)
    assert lengths == [longest(tiny_clip, TEXTS), tokens.shape[1]]
    assert embedded.grad is not None and embedded.grad.abs().max() > 0


def test_learned_prompts_run_only_as_far_as_the_longest_prompt(
    tiny_clip: LoadedClip, tmp_path: Path
) -> None:
    path = tmp_path / "toy.descriptions.json"
    write_descriptions(path, descriptions_document({"long": TEXTS[1:3], "short": TEXTS[::3]}))
    prompts = PromptedClassText(
        tiny_clip, read_class_texts(path, "descriptions"), PromptConfig(n_ctx=4)
    )

    with transformer_lengths(tiny_clip) as lengths:
        prompts()

    assert lengths == [4 + longest(tiny_clip, TEXTS)]


@torch.no_grad()
def test_a_tower_without_the_causal_mask_runs_at_full_length(tmp_path: Path) -> None:
    config = json.loads(TINY_CLIP_CONFIGS["resnet"].read_text())
    config["text_cfg"]["no_causal_mask"] = True
    path = tmp_path / "bidirectional.json"
    path.write_text(json.dumps(config))
    clip = load_clip(str(path), None)
    tokens = clip.tokenizer(TEXTS)
    with transformer_lengths(clip) as lengths:
        features = encode_token_ids(clip.module, tokens)

    torch.testing.assert_close(features, clip.module.encode_text(tokens, normalize=True))
    assert lengths == [tokens.shape[1]]


@pytest.mark.parametrize(
    ("pool_type", "mask", "expected"),
    [("argmax", True, 6), ("eos", True, 4), ("last", True, 8), ("argmax", False, 8)],
)
def test_needed_length_follows_the_pooling_and_the_mask(
    pool_type: str, mask: bool, expected: int
) -> None:
    tokens = torch.tensor([[1, 5, 9, 0, 0, 0, 0, 0], [1, 7, 3, 2, 5, 9, 0, 0]])
    attn_mask = torch.zeros(8, 8) if mask else None
    tower = SimpleNamespace(text_pool_type=pool_type, text_eos_id=2, attn_mask=attn_mask)
    assert needed_length(tower, tokens) == expected


@torch.no_grad()
def test_embeddings_keep_the_texts_order_whatever_the_batching(tiny_clip: LoadedClip) -> None:
    texts = {"long": TEXTS[1:3], "short": [TEXTS[3], TEXTS[0]]}
    for batch_size in (1, 3, 64):
        _, descriptions = compute_embeddings(
            descriptions_document(texts), tiny_clip, "mean", batch_size=batch_size
        )
        for row, class_texts in zip(descriptions, texts.values(), strict=True):
            expected = tiny_clip.module.encode_text(tiny_clip.tokenizer(class_texts), True)
            torch.testing.assert_close(row, expected, rtol=0, atol=1e-5)
