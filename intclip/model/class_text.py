"""Where the head's class features come from: `model.text: cached | prompts`.

`cached` scores against the frozen class embeddings of `intclip-prompts embed` (a tensor [N, D]),
or, with `model.class_text_pooling` other than `embedding`, against each description's cached
embedding ([N, K, D]), the similarities pooled; `prompts` learns DualCoOp contexts around the
class texts (`ClassTexts`) and runs CLIP's text tower at every step. Both are modules returning
`ClassFeatures`, so the head does not care which.
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
from pipeline.embeddings.class_embedding import ClassTextPooling

TextMode = Literal["cached", "prompts"]
ClassTextSource = torch.Tensor | ClassTexts
"""What a model is built on: cached class embeddings [N, D] (or per description, [N, K, D]),
or the class texts of prompts."""


class CachedClassText(nn.Module):
    """The frozen class embeddings [N, D] (or, for a `pooling` over descriptions, description
    embeddings [N, K, D], which the head scores each and pools), normalised, as positive
    features; no negative ones."""

    def __init__(
        self,
        class_embeddings: torch.Tensor,
        embed_dim: int,
        pooling: ClassTextPooling = "embedding",
    ) -> None:
        super().__init__()
        _check_class_embeddings(class_embeddings, embed_dim, pooling)
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


def check_class_text_pooling(mode: TextMode, pooling: ClassTextPooling) -> None:
    """A model config's rule: pooling over descriptions needs their cached embeddings."""
    if pooling != "embedding" and mode != "cached":
        raise ValueError(
            f"class_text_pooling {pooling} pools the cached description embeddings: it needs "
            "text: cached (learned prompts already average their descriptions' features)"
        )


def text_mode_of(source: ClassTextSource) -> TextMode:
    """The `model.text` setting a source serves."""
    return "prompts" if isinstance(source, ClassTexts) else "cached"


def _cached(
    clip: LoadedClip, source: ClassTextSource, config: PromptConfig, pooling: ClassTextPooling
) -> nn.Module:
    return CachedClassText(source, clip.embed_dim, pooling)


def _prompts(
    clip: LoadedClip, source: ClassTextSource, config: PromptConfig, pooling: ClassTextPooling
) -> nn.Module:
    return PromptedClassText(clip, source, config)


TEXT_BUILDERS: dict[
    str, Callable[[LoadedClip, ClassTextSource, PromptConfig, ClassTextPooling], nn.Module]
] = {
    "cached": _cached,
    "prompts": _prompts,
}


def build_class_text(
    clip: LoadedClip,
    source: ClassTextSource,
    mode: TextMode,
    config: PromptConfig,
    pooling: ClassTextPooling = "embedding",
) -> nn.Module:
    """The class-feature module for `model.text: mode`, refusing a source made for the other;
    `pooling` is `model.class_text_pooling` (cached texts only)."""
    given = text_mode_of(source)
    if given != mode:
        what = "class texts" if given == "prompts" else "class embeddings"
        raise UserError(f"model.text: {mode} cannot use {what} (those are for model.text: {given})")
    return TEXT_BUILDERS[mode](clip, source, config, pooling)


@torch.no_grad()
def plain_class_embeddings(clip: LoadedClip, texts: ClassTexts) -> torch.Tensor:
    """CLIP's own class embeddings [N, D] of the class texts, without any context: the zero-shot
    baseline of `prompts`, equal to what `intclip-prompts embed` caches for the same texts."""
    return PromptedClassText(clip, texts, PromptConfig(n_ctx=0))().positive


def _check_class_embeddings(
    embeddings: torch.Tensor, embed_dim: int, pooling: ClassTextPooling
) -> None:
    per_description = pooling != "embedding"
    shape = (
        "[num_classes, descriptions, embed_dim]" if per_description else "[num_classes, embed_dim]"
    )
    if not isinstance(embeddings, torch.Tensor) or not embeddings.is_floating_point():
        raise UserError(f"class embeddings must be a float tensor {shape}")
    if (
        embeddings.ndim != 2 + per_description
        or 0 in embeddings.shape
        or embeddings.shape[-1] != embed_dim
    ):
        why = f" (class_text_pooling {pooling})" if per_description else ""
        raise UserError(
            f"class embeddings have shape {tuple(embeddings.shape)}; this CLIP needs "
            f"{shape.replace('embed_dim', str(embed_dim))}{why}"
        )
    if not torch.isfinite(embeddings).all() or (embeddings.norm(dim=-1) == 0).any():
        raise UserError("class embeddings contain non-finite values or all-zero rows")
