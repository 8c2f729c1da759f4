"""Where the head's class features come from: `model.text: cached | prompts`.

`cached` scores against the frozen class embeddings of `intclip-prompts embed` (a tensor [N, D]);
`prompts` learns DualCoOp contexts around the class texts (`ClassTexts`) and runs CLIP's text
tower at every step. Both are modules returning `ClassFeatures`, so the head does not care which.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from intclip.model.head import ClassFeatures
from intclip.model.prompts import ClassTexts, PromptConfig, PromptedClassText
from pipeline.clip.loading import LoadedClip, tensor_sha256
from pipeline.common.errors import UserError

TextMode = Literal["cached", "prompts"]
ClassTextSource = torch.Tensor | ClassTexts
"""What a model is built on: cached class embeddings [N, D], or the class texts of prompts."""


class CachedClassText(nn.Module):
    """The frozen class embeddings, normalised, as positive features; no negative ones."""

    def __init__(self, class_embeddings: torch.Tensor, embed_dim: int) -> None:
        super().__init__()
        _check_class_embeddings(class_embeddings, embed_dim)
        normalized = F.normalize(class_embeddings.detach().float(), dim=-1)
        self.register_buffer("class_embeddings", normalized, persistent=False)
        self.source_sha256 = tensor_sha256(class_embeddings.float())

    @property
    def num_classes(self) -> int:
        return len(self.class_embeddings)

    @property
    def trained(self) -> None:
        """Nothing trains: the cached embeddings stay as `intclip-prompts embed` made them."""
        return None

    def forward(self) -> ClassFeatures:
        return ClassFeatures(self.class_embeddings, None)


def text_mode_of(source: ClassTextSource) -> TextMode:
    """The `model.text` setting a source serves."""
    return "prompts" if isinstance(source, ClassTexts) else "cached"


def _cached(clip: LoadedClip, source: ClassTextSource, config: PromptConfig) -> nn.Module:
    return CachedClassText(source, clip.embed_dim)


def _prompts(clip: LoadedClip, source: ClassTextSource, config: PromptConfig) -> nn.Module:
    return PromptedClassText(clip, source, config)


TEXT_BUILDERS: dict[str, Callable[[LoadedClip, ClassTextSource, PromptConfig], nn.Module]] = {
    "cached": _cached,
    "prompts": _prompts,
}


def build_class_text(
    clip: LoadedClip, source: ClassTextSource, mode: TextMode, config: PromptConfig
) -> nn.Module:
    """The class-feature module for `model.text: mode`, refusing a source made for the other."""
    given = text_mode_of(source)
    if given != mode:
        what = "class texts" if given == "prompts" else "class embeddings"
        raise UserError(f"model.text: {mode} cannot use {what} (those are for model.text: {given})")
    return TEXT_BUILDERS[mode](clip, source, config)


@torch.no_grad()
def plain_class_embeddings(clip: LoadedClip, texts: ClassTexts) -> torch.Tensor:
    """CLIP's own class embeddings [N, D] of the class texts, without any context: the zero-shot
    baseline of `prompts`, equal to what `intclip-prompts embed` caches for the same texts."""
    return PromptedClassText(clip, texts, PromptConfig(n_ctx=0))().positive


def _check_class_embeddings(embeddings: torch.Tensor, embed_dim: int) -> None:
    if not isinstance(embeddings, torch.Tensor) or not embeddings.is_floating_point():
        raise UserError("class embeddings must be a float tensor [num_classes, embed_dim]")
    if embeddings.ndim != 2 or embeddings.shape[0] == 0 or embeddings.shape[1] != embed_dim:
        raise UserError(
            f"class embeddings have shape {tuple(embeddings.shape)}; this CLIP needs "
            f"[num_classes, {embed_dim}]"
        )
    if not torch.isfinite(embeddings).all() or (embeddings.norm(dim=-1) == 0).any():
        raise UserError("class embeddings contain non-finite values or all-zero rows")
