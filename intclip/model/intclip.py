"""The assembled IntCLIP model: sight-semantic encoder, sight-assisted aggregation, class head.

IntCLIP (Yang et al., "Synergy of Sight and Semantics: Visual Intention Understanding with CLIP",
ECCV 2024) keeps CLIP's image tower as a frozen *sight* branch, trains a copy of its deepest
stages as a *semantic* branch, fuses the two maps and scores them against class text embeddings.

Where this implementation departs from the official code (github.com/yan9qu/IntCLIP), and why:

- Global token. The official code slices the mean token off the attention-pool output and then
  takes the first remaining position as its "global" token, i.e. the top-left image region. Here
  the global token is what CLIP itself uses as the image embedding: the attention-pool output
  (ResNet) or the projected class token (ViT), computed on the semantic branch.
- BatchNorm. The official trainer calls `model.eval()` and puts only the prompt learner back in
  train mode (`utils/trainers.py`, `train_coop`), so in its published config the whole image
  tower, the trained semantic copy included, normalises with CLIP's running statistics, which
  never move. Here the trunk, the sight branch and the joint-space projection always stay in
  eval mode; `semantic_batchnorm` chooses the same for the semantic copy (`frozen`, the default)
  or lets it update its own statistics (`train`).
- Any backbone, any input size. The official code works only for RN101 at 224 px (a hard-coded
  7x7 grid). Here any open_clip ModifiedResNet or class-token VisionTransformer is split (see
  `intclip.model.backbone`) at any input size the tower takes; position embeddings are resampled
  to the actual grid. Any other tower is refused with a clear error.
- Class texts. The official head learns positive and negative prompt contexts (DualCoOp) before
  one sentence per class. Here `text: cached` (the default) scores against CLIP text embeddings of
  the class descriptions, computed once by the embedding stage and kept as a frozen buffer;
  `text: prompts` learns the official contexts, placed before each of the class's descriptions
  (or its name) and averaged per class (`intclip.model.prompts`). The head's pooling temperature,
  logit scale and per-class bias are learned by default; `head: official` with all three fixed
  is the official form (see `intclip.model.head`).

The official code also picks its best checkpoint on the test set, never applies its training
augmentation (its train split is named "trainval", the augmentation is keyed on "train") and feeds
images without CLIP's mean/std normalisation. Those are matters of the data and training code
(`augment.enabled`, `data.normalize` in the training config), not of this module; it expects
images normalised with the `image_mean` / `image_std` of the `LoadedClip` it was built from.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from pydantic import BaseModel, ConfigDict, PositiveInt, field_validator, model_validator
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from intclip.model.aggregation import SightAssistedAggregation
from intclip.model.backbone import build_sight_semantic_encoder
from intclip.model.class_text import (
    ClassTextSource,
    TextMode,
    build_class_text,
    check_class_text_pooling,
)
from intclip.model.head import (
    ClassHead,
    HeadMode,
    HeadPrecision,
    PositiveScalarSetting,
    ScalarSetting,
)
from intclip.model.prompts import PromptConfig
from intclip.model.trained import Role, TrainedModel
from pipeline.clip.loading import LoadedClip
from pipeline.embeddings.class_embedding import ClassTextPooling


class ModelConfig(BaseModel):
    """IntCLIP's architecture switches (`model.head: global | regional | both | official`);
    stored in every checkpoint."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    input: Literal["images"] = "images"
    """What a training step feeds the model: IntCLIP trains the deep stages of the image tower,
    so it needs `images`; `features` (cached frozen features) is for the heads `linear`, `mlp`
    and `text` (`intclip.model.frozen_clip`)."""
    semantic_depth: PositiveInt | None = None
    """Deepest stages copied into the semantic branch: ResNet residual stages (default 2,
    layer3+layer4) or ViT blocks (default: the deeper half)."""
    aggregation: bool = True
    """Sight-assisted aggregation on, or off (the head then sees the semantic map alone)."""
    head: HeadMode = "both"
    """Score the global token, the regions (spatial softmax pooling), the mean of both, or
    `official`: the global token as one more position of the spatial softmax pooling."""
    aggregation_reduction: PositiveInt = 8
    """Query/key width of the aggregation: C // aggregation_reduction."""
    pooling_temperature: PositiveScalarSetting = PositiveScalarSetting(initial=20.0)
    """Temperature of the spatial softmax over cosine similarities (official: 20, fixed)."""
    logit_scale: PositiveScalarSetting = PositiveScalarSetting(initial=20.0)
    """Multiplier from pooled cosine similarity to logit (official: 100, fixed)."""
    class_bias: ScalarSetting = ScalarSetting(initial=0.0)
    """Per-class bias added to the logits (official: none, i.e. 0 and fixed)."""
    head_precision: HeadPrecision = "fp32"
    """The head's arithmetic under mixed precision: float32 always, or whatever autocast is in
    force (`autocast`: the official code computes its logits in fp16)."""
    semantic_batchnorm: Literal["frozen", "train"] = "frozen"
    """The semantic copy's BatchNorm: eval mode with CLIP's statistics (`frozen`, as the
    official code runs), or train mode, updating its own statistics."""
    text: TextMode = "cached"
    """Class features from the cached embeddings (frozen), or from learned prompt contexts run
    through CLIP's frozen text tower at every step (DualCoOp, as the official code)."""
    prompts: PromptConfig = PromptConfig()
    """The learned contexts of `text: prompts`."""
    class_text_pooling: ClassTextPooling = "embedding"
    """With `text: cached`: score against each class's embedding (`embedding`, the mean of its
    descriptions' embeddings), or against each of its descriptions and pool the similarities:
    `mean`, `max` or `softmax` (weighted by a softmax over them at CLIP's temperature, 100).
    Reads the per-description embeddings of the same cache file."""

    @field_validator("input", mode="before")
    @classmethod
    def _images_only(cls, value: object) -> object:
        if value == "features":
            raise ValueError(
                "IntCLIP trains the deep stages of the image tower, so it needs images; "
                "model.input: features is for a head on frozen features (model.head: linear, "
                "mlp or text)"
            )
        return value

    @model_validator(mode="after")
    def _pooling_of_cached_texts(self) -> ModelConfig:
        check_class_text_pooling(self.text, self.class_text_pooling)
        return self

    @model_validator(mode="after")
    def _aggregation_feeds_a_regional_head(self) -> ModelConfig:
        if self.aggregation and self.head == "global":
            raise ValueError(
                "aggregation only changes the regional scores: with head 'global' "
                "set aggregation off"
            )
        return self


class IntentFeatures(NamedTuple):
    """Joint-space features: maps [B, D, H, W], global token [B, D] of the semantic branch."""

    sight_map: torch.Tensor
    semantic_map: torch.Tensor
    fused_map: torch.Tensor
    global_token: torch.Tensor


class IntCLIP(TrainedModel):
    """Multi-label intent logits [B, num_classes] from images normalised for `clip`.

    `class_text` is what `config.text` needs: cached class embeddings [N, D] for `cached`, the
    `ClassTexts` of a descriptions file for `prompts`.
    """

    def __init__(self, clip: LoadedClip, class_text: ClassTextSource, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.clip_identity = clip.identity
        self.encoder = build_sight_semantic_encoder(clip.module.visual, config.semantic_depth)
        self.aggregation = (
            SightAssistedAggregation(clip.embed_dim, config.aggregation_reduction)
            if config.aggregation
            else None
        )
        self.text = build_class_text(
            clip, class_text, config.text, config.prompts, config.class_text_pooling
        )
        self.head = ClassHead(
            self.text.num_classes,
            config.head,
            config.pooling_temperature,
            config.logit_scale,
            config.class_bias,
            config.head_precision,
            config.class_text_pooling,
        )
        self.to(next(clip.module.parameters()).device)

    def encode(self, images: torch.Tensor) -> IntentFeatures:
        """Both branches and their fusion, in CLIP's joint space."""
        encoded = self.encoder(images)
        fused = (
            self.aggregation(encoded.semantic_map, encoded.sight_map)
            if self.aggregation is not None
            else encoded.semantic_map
        )
        return IntentFeatures(
            encoded.sight_map, encoded.semantic_map, fused, encoded.semantic_global
        )

    @property
    def trains_buffers(self) -> bool:
        """Whether training changes any buffer. Only the semantic copy's BatchNorm statistics in
        train mode do; every other buffer (frozen statistics, class embeddings, prompt tokens,
        fixed head scalars) is a constant, which DDP need not send from rank 0 at every step."""
        return self.config.semantic_batchnorm == "train"

    def train(self, mode: bool = True) -> IntCLIP:
        """`semantic_batchnorm: frozen` keeps the semantic copy's BatchNorm in eval mode too."""
        super().train(mode)
        if self.config.semantic_batchnorm == "frozen":
            for module in self.encoder.semantic.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.encode(images)
        return self.head(features.fused_map, features.global_token, self.text())

    def trained_modules(self) -> dict[Role, nn.Module]:
        """The modules that training changes, by role; everything else is CLIP, frozen."""
        modules: dict[Role, nn.Module | None] = {
            "semantic": self.encoder.semantic,
            "aggregation": self.aggregation,
            "head": self.head,
            "prompts": self.text.trained,
        }
        return {role: module for role, module in modules.items() if module is not None}
