"""A frozen CLIP image tower with a small trained head: the frozen-feature recipes.

A frozen CLIP ViT-L/14 with a small head reaches 47.40 test macro F1 on Intentonomy against
IntCLIP's 40.15 (README, "Results to beat"). The tower never changes, so neither do its
features of an image: with `model.input: features` they are read from the cache that
`intclip-train features` writes (`intclip.data.feature_cache`) and a training step runs the head
alone; with `model.input: images` the same tower runs on every batch, which costs the tower's
forward pass but lets it see the image augmentation. On the same images both give the same
scores (tests/intclip/training/test_features.py).

Heads (`model.head`), all on CLIP's image embedding, optionally its dense map:
- `linear`: one linear layer;
- `mlp`: linear, GELU, dropout, linear;
- `text`: cosine similarity with the class text features (the cached class embeddings, or
  learned prompts with `model.text: prompts`), times a learned scale, plus a learned per-class
  bias; with `features: dense` the mean of that and the regional (spatial softmax) similarity
  over the dense map, IntCLIP's `both` head without the trained branch.
`linear` and `mlp` read the embedding scaled to unit length times sqrt(D), so every dimension
has about unit size whatever the tower.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveInt, model_validator
from torch import nn

from intclip.data.feature_dataset import FeatureBatch, Features
from intclip.model.backbone import build_dense_tower
from intclip.model.class_text import (
    ClassTextSource,
    TextMode,
    build_class_text,
    check_class_text_pooling,
)
from intclip.model.head import ClassHead, HeadPrecision, PositiveScalarSetting, ScalarSetting
from intclip.model.prompts import PromptConfig
from intclip.model.trained import Role, TrainedModel
from pipeline.clip.loading import LoadedClip
from pipeline.embeddings.class_embedding import ClassTextPooling

FrozenHead = Literal["linear", "mlp", "text"]
FROZEN_HEADS: tuple[str, ...] = ("linear", "mlp", "text")
ModelInputKind = Literal["images", "features"]


class FrozenModelConfig(BaseModel):
    """A frozen CLIP image tower and a trained head (`model.head: linear | mlp | text`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    input: ModelInputKind = "features"
    """`features`: the tower's features come from the cache of `intclip-train features` (made
    when missing), and a step runs the head alone; `images`: the tower runs on every batch,
    which lets it see the image augmentation (`augment`)."""
    head: FrozenHead
    """`linear`, `mlp`, or `text` (scaled cosine with the class text features plus a bias)."""
    features: Literal["pooled", "dense"] = "pooled"
    """What the head reads: CLIP's pooled image embedding, or (`text` only) the dense map too,
    from features made with `intclip-train features --dense`."""
    hidden: PositiveInt = 1024
    """Width of the `mlp` head's hidden layer."""
    dropout: float = Field(default=0.5, ge=0.0, lt=1.0)
    """Dropout before the `mlp` head's last layer."""
    feature_noise: NonNegativeFloat = 0.0
    """Feature-space augmentation: in training, Gaussian noise of this standard deviation times
    each feature vector's root-mean-square value is added to it; 0 turns it off."""
    logit_scale: PositiveScalarSetting = PositiveScalarSetting(initial=20.0)
    """The `text` head's multiplier from cosine similarity to logit."""
    class_bias: ScalarSetting = ScalarSetting(initial=0.0)
    """The `text` head's per-class bias."""
    pooling_temperature: PositiveScalarSetting = PositiveScalarSetting(initial=20.0)
    """The `text` head's spatial softmax temperature over the dense map (`features: dense`)."""
    head_precision: HeadPrecision = "fp32"
    """The `text` head's arithmetic under mixed precision (see the IntCLIP model's)."""
    text: TextMode = "cached"
    """The `text` head's class features: the cached embeddings, or learned prompt contexts."""
    prompts: PromptConfig = PromptConfig()
    """The learned contexts of `text: prompts`."""
    class_text_pooling: ClassTextPooling = "embedding"
    """The `text` head with `text: cached`: score against each class's embedding
    (`embedding`), or against each of its descriptions and pool: `mean`, `max` or `softmax`
    (as IntCLIP's `model.class_text_pooling`)."""

    @model_validator(mode="after")
    def _settings_of_the_head_in_use(self) -> FrozenModelConfig:
        """A setting of another head must keep its default: a changed one would do nothing."""
        if self.features == "dense" and self.head != "text":
            raise ValueError("features: dense needs head: text (the others read the embedding)")
        owners = {
            "hidden": "mlp",
            "dropout": "mlp",
            **dict.fromkeys(
                (
                    "logit_scale",
                    "class_bias",
                    "pooling_temperature",
                    "head_precision",
                    "text",
                    "prompts",
                    "class_text_pooling",
                ),
                "text",
            ),
        }
        for name, owner in owners.items():
            if self.head != owner and getattr(self, name) != type(self).model_fields[name].default:
                raise ValueError(f"{name} is a setting of head: {owner}, not of head: {self.head}")
        check_class_text_pooling(self.text, self.class_text_pooling)
        return self


class FrozenTower(nn.Module):
    """CLIP's image tower, frozen, always in float32 and eval mode: images -> `FeatureBatch`.

    The same module computes the cached features and runs in `model.input: images`, so both
    paths see identical features. The pooled embedding is the tower's own output, at the
    tower's own input size; the dense map comes from the tower read densely
    (`intclip.model.backbone.build_dense_tower`), its global token being that same embedding."""

    def __init__(self, clip: LoadedClip, dense: bool) -> None:
        super().__init__()
        self.visual = clip.module.visual
        self.dense_tower = build_dense_tower(self.visual) if dense else None
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FrozenTower:
        """Frozen BatchNorm statistics never move: the tower stays in eval mode."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> FeatureBatch:
        with torch.autocast(images.device.type, enabled=False):
            images = images.float()
            if self.dense_tower is None:
                return FeatureBatch(self.visual(images).float())
            dense, pooled = self.dense_tower(images)
            return FeatureBatch(pooled.float(), dense.float())


def _unit_scaled(pooled: torch.Tensor) -> torch.Tensor:
    """Unit length times sqrt(D): dimensions of about unit size, whatever the tower's scale."""
    return F.normalize(pooled.float(), dim=-1) * math.sqrt(pooled.shape[-1])


class LinearHead(nn.Module):
    def __init__(self, embed_dim: int, num_classes: int, config: FrozenModelConfig) -> None:
        super().__init__()
        self.linear = nn.Linear(embed_dim, num_classes)

    def forward(self, features: FeatureBatch, text: nn.Module) -> torch.Tensor:
        return self.linear(_unit_scaled(features.pooled))


class MLPHead(nn.Module):
    def __init__(self, embed_dim: int, num_classes: int, config: FrozenModelConfig) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(embed_dim, config.hidden),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden, num_classes),
        )

    def forward(self, features: FeatureBatch, text: nn.Module) -> torch.Tensor:
        return self.layers(_unit_scaled(features.pooled))


class TextHead(nn.Module):
    """Scaled cosine with the class text features plus a per-class bias: IntCLIP's class head
    in its `global` form on the pooled embedding, or `both` with the dense map."""

    def __init__(self, embed_dim: int, num_classes: int, config: FrozenModelConfig) -> None:
        super().__init__()
        self.scores = ClassHead(
            num_classes,
            "both" if config.features == "dense" else "global",
            config.pooling_temperature,
            config.logit_scale,
            config.class_bias,
            config.head_precision,
            config.class_text_pooling,
        )

    def forward(self, features: FeatureBatch, text: nn.Module) -> torch.Tensor:
        return self.scores(features.dense, features.pooled, text())


HEAD_BUILDERS: dict[str, Callable[[int, int, FrozenModelConfig], nn.Module]] = {
    "linear": LinearHead,
    "mlp": MLPHead,
    "text": TextHead,
}


class FrozenCLIP(TrainedModel):
    """Multi-label logits [B, num_classes] from images normalised for `clip` (`takes:
    images`) or from their cached tower features (`features`); `takes` defaults to the
    config's `input` (prediction on new images overrides it with `images`)."""

    def __init__(
        self,
        clip: LoadedClip,
        class_text: ClassTextSource,
        config: FrozenModelConfig,
        takes: ModelInputKind | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.clip_identity = clip.identity
        self.takes = takes or config.input
        dense = config.features == "dense"
        self.tower = FrozenTower(clip, dense) if self.takes == "images" else None
        self.text = build_class_text(
            clip, class_text, config.text, config.prompts, config.class_text_pooling
        )
        self.head = HEAD_BUILDERS[config.head](clip.embed_dim, self.text.num_classes, config)
        self.to(next(clip.module.parameters()).device)

    def forward(self, inputs: torch.Tensor | Features) -> torch.Tensor:
        if self.tower is not None:
            features = self.tower(inputs)
        elif isinstance(inputs, torch.Tensor):
            features = FeatureBatch(inputs)
        else:
            features = inputs
        return self.head(self._noisy(features), self.text)

    def _noisy(self, features: FeatureBatch) -> FeatureBatch:
        """`feature_noise` in training: noise in proportion to each vector's RMS value."""
        noise = self.config.feature_noise
        if not (self.training and noise):
            return features

        def jitter(tensor: torch.Tensor | None, dim: int) -> torch.Tensor | None:
            if tensor is None:
                return None
            rms = tensor.pow(2).mean(dim=dim, keepdim=True).sqrt()
            return tensor + noise * rms * torch.randn_like(tensor)

        return FeatureBatch(jitter(features.pooled, -1), jitter(features.dense, 1))

    def trained_modules(self) -> dict[Role, nn.Module]:
        modules: dict[Role, nn.Module | None] = {"head": self.head, "prompts": self.text.trained}
        return {role: module for role, module in modules.items() if module is not None}
