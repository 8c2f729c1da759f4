"""The models a config can name, one builder each: IntCLIP, and a head on a frozen tower.

`model.head` tells them apart: IntCLIP's heads (`global`, `regional`, `both`, `official`) train
the image tower's deep stages; `linear`, `mlp` and `text` train a head on the frozen tower's
features (`intclip.model.frozen_clip`). Configs and checkpoint headers validate against
`AnyModelConfig`, so each kind keeps its own keys and refuses the other's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from pydantic import Discriminator, Tag

from intclip.model.class_text import ClassTextSource
from intclip.model.frozen_clip import FROZEN_HEADS, FrozenCLIP, FrozenModelConfig, ModelInputKind
from intclip.model.intclip import IntCLIP, ModelConfig
from intclip.model.trained import TrainedModel
from pipeline.clip.loading import LoadedClip

MODEL_KINDS = ("intclip", "frozen")
"""The tags of `AnyModelConfig`, which pydantic puts into error locations."""


def without_model_kind(location: tuple) -> tuple:
    """An error location as the user wrote the config: `model.head`, not `model.intclip.head`."""
    return tuple(part for part in location if part not in MODEL_KINDS)


def _kind(value: Any) -> str:
    head = value.get("head") if isinstance(value, dict) else getattr(value, "head", None)
    return "frozen" if head in FROZEN_HEADS else "intclip"


AnyModelConfig = Annotated[
    Annotated[ModelConfig, Tag("intclip")] | Annotated[FrozenModelConfig, Tag("frozen")],
    Discriminator(_kind),
]
"""IntCLIP's config, or a frozen-tower head's, as `model.head` says."""

Builder = Callable[[LoadedClip, ClassTextSource, Any, ModelInputKind | None], TrainedModel]
MODEL_BUILDERS: dict[type, Builder] = {
    ModelConfig: lambda clip, text, config, takes: IntCLIP(clip, text, config),
    FrozenModelConfig: FrozenCLIP,
}


def build_model(
    clip: LoadedClip,
    class_text: ClassTextSource,
    config: ModelConfig | FrozenModelConfig,
    takes: ModelInputKind | None = None,
) -> TrainedModel:
    """The model `config` describes on `clip` and `class_text`; `takes: images` gives a
    frozen-tower model its tower even when it trained on cached features (prediction)."""
    return MODEL_BUILDERS[type(config)](clip, class_text, config, takes)
