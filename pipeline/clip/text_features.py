"""CLIP text features, computed only over the positions they depend on.

open_clip's built-in CLIP text transformer is causal and pools the feature at the end-of-text
token, so whatever sits after the last end-of-text token of a batch (padding up to the 77-token
context) can never change a pooled feature. Class texts are 3 to 35 tokens long: cutting the
batch at its longest text gives the same features (up to float rounding) for a fraction of the
work, on the CPU and the GPU alike, with or without gradients. Towers that are not causal, or
that pool elsewhere, run at full length.

Finding the cut reads the tokens on the host, so it is done where that costs nothing: per batch
when embedding, and once, when the prompts are built, for learned prompts (whose tokens never
change); `text_transformer_features` itself runs at the length it is given.
"""

from __future__ import annotations

from typing import Any

import open_clip
import torch
from open_clip.transformer import text_global_pool
from torch import nn

POOLS_AT_END_OF_TEXT = ("argmax", "eos")


def needed_length(tower: Any, tokens: torch.Tensor) -> int:
    """How many leading positions of token ids [B, L] the pooled features of `tower` (as in
    `text_transformer_features`) depend on."""
    pool_type = tower.text_pool_type
    if tower.attn_mask is None or pool_type not in POOLS_AT_END_OF_TEXT or tokens.numel() == 0:
        return tokens.shape[-1]
    if pool_type == "argmax":
        ends = tokens.argmax(dim=-1)
    else:
        ends = (tokens == _eos_id(tower)).int().argmax(dim=-1)
    return int(ends.max()) + 1


def _eos_id(tower: Any) -> int | None:
    return getattr(tower, "text_eos_id", None)  # older open_clip CLIPs lack it


def text_transformer_features(
    tower: Any, embedded: torch.Tensor, tokens: torch.Tensor
) -> torch.Tensor:
    """Text features [B, D] of token embeddings [B, L, W] whose ids are `tokens` [B, L].

    `tower` has open_clip.CLIP's text attributes (`positional_embedding`, `transformer`,
    `ln_final`, `text_projection`, `text_pool_type`, `text_eos_id`, `attn_mask`): the CLIP
    itself, or a module that shares them. The same steps as `CLIP.encode_text` after the token
    lookup, at the given length L (at most the context; cut it with `needed_length`).
    """
    attn_mask = tower.attn_mask
    length = tokens.shape[-1]
    if attn_mask is not None:
        attn_mask = attn_mask[:length, :length]
    cast_dtype = tower.transformer.get_cast_dtype()
    x = embedded.to(cast_dtype) + tower.positional_embedding[:length].to(cast_dtype)
    x = tower.transformer(x, attn_mask=attn_mask)
    x = tower.ln_final(x)
    x = text_global_pool(x, tokens, tower.text_pool_type, eos_token_id=_eos_id(tower))
    if isinstance(tower.text_projection, nn.Linear):
        return tower.text_projection(x)
    return x if tower.text_projection is None else x @ tower.text_projection


def encode_token_ids(module: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Normalised text features [B, D] of token ids [B, L]: `encode_text(normalize=True)`,
    cut at the batch's longest text for open_clip's built-in CLIP text tower."""
    if type(module) is not open_clip.CLIP:
        return module.encode_text(tokens, normalize=True)
    tokens = tokens[:, : needed_length(module, tokens)]
    features = text_transformer_features(module, module.token_embedding(tokens), tokens)
    return torch.nn.functional.normalize(features, dim=-1)
