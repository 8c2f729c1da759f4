"""The class head: image features scored against class text features.

Every form pools a per-class similarity, multiplies it by a logit scale and adds a per-class
bias. The pooling temperature, the logit scale and the bias are separate settings, each either
learned or fixed (`ScalarSetting`), so the official head (fixed 20 and 100, no bias) and ours
(learned) are one config apart.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, PositiveFloat
from torch import nn

from pipeline.embeddings.class_embedding import ClassTextPooling
from pipeline.embeddings.pooling import pool_descriptions

HeadMode = Literal["global", "regional", "both", "official"]
HeadPrecision = Literal["fp32", "autocast"]


class ScalarSetting(BaseModel):
    """A head scalar: its starting value, and whether training changes it."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    initial: float
    learn: bool = True


class PositiveScalarSetting(ScalarSetting):
    """A scale or temperature: positive, learned in log space."""

    initial: PositiveFloat


class ClassFeatures(NamedTuple):
    """Class text features [N, D]: what each class looks like, and optionally what it does not
    (the negative prompts of DualCoOp), whose pooled similarity is subtracted. Or each class's
    descriptions [N, K, D] (`model.class_text_pooling`): every one is scored and the K
    similarities pooled as the head's `description_pooling` says, wherever a similarity is
    taken."""

    positive: torch.Tensor
    negative: torch.Tensor | None = None

    def mapped(self, change: Callable[[torch.Tensor], torch.Tensor]) -> ClassFeatures:
        """The same features with `change` applied to each tensor."""
        negative = None if self.negative is None else change(self.negative)
        return self._replace(positive=change(self.positive), negative=negative)


Similarity = Callable[
    [ClassFeatures, torch.Tensor, torch.Tensor, torch.Tensor, ClassTextPooling], torch.Tensor
]


def _cosine(
    classes: torch.Tensor, positions: torch.Tensor, pooling: ClassTextPooling = "embedding"
) -> torch.Tensor:
    """Cosine similarity [B, N, P] of unit class features [N, D] with positions [B, D, P]; of
    unit descriptions [N, K, D], each one's similarity pooled over K."""
    positions = F.normalize(positions, dim=1)
    if classes.ndim == 2:
        return torch.einsum("nd,bdp->bnp", classes, positions)
    return pool_descriptions(torch.einsum("nkd,bdp->bnkp", classes, positions), pooling, dim=2)


def _global_cosine(
    classes: ClassFeatures, token: torch.Tensor, pooling: ClassTextPooling
) -> torch.Tensor:
    """Cosine similarity [B, N] of a unit global token [B, D] with the positive features."""
    if classes.positive.ndim == 2:
        return token @ classes.positive.T
    return _cosine(classes.positive, token[:, :, None], pooling)[:, :, 0]


def global_similarity(
    classes: ClassFeatures,
    dense: torch.Tensor,
    global_token: torch.Tensor,
    temperature: torch.Tensor,
    pooling: ClassTextPooling = "embedding",
) -> torch.Tensor:
    """Cosine similarity [B, N] of the global token with each class."""
    token = F.normalize(global_token, dim=-1)
    similarity = _global_cosine(classes, token, pooling)
    return similarity if classes.negative is None else similarity - token @ classes.negative.T


def _pooled(
    classes: ClassFeatures,
    positions: torch.Tensor,
    temperature: torch.Tensor,
    pooling: ClassTextPooling,
) -> torch.Tensor:
    """Spatial softmax pooling [B, N] over positions [B, D, P], the weights from the positive
    features; negative features are pooled with the same weights and subtracted (DualCoOp)."""
    positive = _cosine(classes.positive, positions, pooling)
    weights = torch.softmax(temperature * positive, dim=-1)
    pooled = (weights * positive).sum(dim=-1)
    if classes.negative is None:
        return pooled
    return pooled - (weights * _cosine(classes.negative, positions)).sum(dim=-1)


def regional_similarity(
    classes: ClassFeatures,
    dense: torch.Tensor,
    global_token: torch.Tensor,
    temperature: torch.Tensor,
    pooling: ClassTextPooling = "embedding",
) -> torch.Tensor:
    """Class-specific spatial softmax pooling [B, N] of the per-position cosine similarities.

    Each class looks at the positions that resemble it most, so a small object or region that
    carries an intent is not averaged away.
    """
    return _pooled(classes, dense.flatten(2), temperature, pooling)


def combined_similarity(
    classes: ClassFeatures,
    dense: torch.Tensor,
    global_token: torch.Tensor,
    temperature: torch.Tensor,
    pooling: ClassTextPooling = "embedding",
) -> torch.Tensor:
    """The mean of the global and the regional similarity."""
    global_part = global_similarity(classes, dense, global_token, temperature, pooling)
    regional = regional_similarity(classes, dense, global_token, temperature, pooling)
    return (global_part + regional) / 2


def official_similarity(
    classes: ClassFeatures,
    dense: torch.Tensor,
    global_token: torch.Tensor,
    temperature: torch.Tensor,
    pooling: ClassTextPooling = "embedding",
) -> torch.Tensor:
    """The official form: the global token is one more position in the spatial softmax pooling.

    With negative class features, their similarity is pooled with the positive features'
    weights and subtracted, as the official code does (its softmax over negative and positive
    logits is a sigmoid of their difference).
    """
    positions = torch.cat([global_token[:, :, None], dense.flatten(2)], dim=2)
    return _pooled(classes, positions, temperature, pooling)


SIMILARITY_BY_HEAD: dict[str, Similarity] = {
    "global": global_similarity,
    "regional": regional_similarity,
    "both": combined_similarity,
    "official": official_similarity,
}


class ClassHead(nn.Module):
    """Logits [B, N]: logit scale * pooled similarity + per-class bias."""

    def __init__(
        self,
        num_classes: int,
        mode: HeadMode,
        pooling_temperature: PositiveScalarSetting,
        logit_scale: PositiveScalarSetting,
        class_bias: ScalarSetting,
        precision: HeadPrecision = "fp32",
        description_pooling: ClassTextPooling = "embedding",
    ) -> None:
        """`description_pooling` other than `embedding`: the class features are descriptions
        [N, K, D], each scored and pooled (`model.class_text_pooling`)."""
        super().__init__()
        self.in_fp32 = precision == "fp32"
        self.description_pooling = description_pooling
        self._scalar(
            "log_pooling_temperature",
            math.log(pooling_temperature.initial),
            (),
            pooling_temperature,
        )
        self._scalar("log_logit_scale", math.log(logit_scale.initial), (), logit_scale)
        self._scalar("class_bias", class_bias.initial, (num_classes,), class_bias)
        self.similarity = SIMILARITY_BY_HEAD[mode]

    def _scalar(
        self, name: str, value: float, shape: tuple[int, ...], setting: ScalarSetting
    ) -> None:
        """A parameter when learned; otherwise a constant rebuilt from the config, not stored."""
        tensor = torch.full(shape, float(value))
        if setting.learn:
            self.register_parameter(name, nn.Parameter(tensor))
        else:
            self.register_buffer(name, tensor, persistent=False)

    def forward(
        self, dense: torch.Tensor | None, global_token: torch.Tensor, classes: ClassFeatures
    ) -> torch.Tensor:
        """Logits against `classes`: frozen cached embeddings or learned prompt features. `dense`
        may be None for the `global` form, which reads the global token alone.

        With precision `fp32` (the default) computed in float32 even under autocast: a logit
        scale of 100 on bfloat16 similarities (8 significant bits) would put an error of about
        0.1 on logits of 20-30, as large as the positive-minus-negative differences the prompts
        learn. The head is tiny; fp32 costs nothing measurable. `autocast` leaves it to the
        autocast in force, as the official code does."""
        if not self.in_fp32:
            return self._logits(dense, global_token, classes)
        with torch.autocast(global_token.device.type, enabled=False):
            features = classes.mapped(torch.Tensor.float)
            dense = None if dense is None else dense.float()
            return self._logits(dense, global_token.float(), features)

    def _logits(
        self, dense: torch.Tensor | None, global_token: torch.Tensor, classes: ClassFeatures
    ) -> torch.Tensor:
        per_description = self.description_pooling != "embedding"
        if (classes.positive.ndim == 3) != per_description:
            raise ValueError(
                f"class features of shape {tuple(classes.positive.shape)} for description "
                f"pooling {self.description_pooling}"
            )
        classes = classes.mapped(lambda features: F.normalize(features, dim=-1))
        temperature = self.log_pooling_temperature.exp()
        pooling = self.description_pooling
        similarity = self.similarity(classes, dense, global_token, temperature, pooling)
        return self.log_logit_scale.exp() * similarity + self.class_bias
