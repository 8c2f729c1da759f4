"""What feeds a model in training and scoring, as `model.input` says: images or cached features.

`images`: decoded files through the config's image pipeline and loader workers, finished on the
device (`intclip.data.image_pipeline`). `features`: the frozen tower's features of the same
images from the cache (computed there when missing, `intclip.training.features`), indexed in
memory, so a step runs the head alone. Either way a dataset item is (input, target, row), and the
loop, the scoring and the protocol are the same.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch.utils.data import Dataset

from intclip.data.dataset import ImageDataset, LabelIndex
from intclip.data.feature_dataset import FeatureDataset, FeatureInput
from intclip.data.loader import LoaderOptions
from intclip.runtime import distributed
from intclip.training.config import TrainConfig
from intclip.training.factory import Components
from intclip.training.features import Extraction, config_pooling, ensure_features


@dataclass(frozen=True)
class Inputs:
    """How one config's splits become model inputs on this process's device."""

    config: TrainConfig
    components: Components
    context: distributed.Context
    model_input: Callable[[Any], Any]
    options: LoaderOptions
    features: bool

    def dataset(self, index: LabelIndex, name: str, train: bool = False) -> Dataset:
        """`index`'s items: images with the training or evaluation transform, or features."""
        if self.features:
            return self._feature_dataset(index, name)
        pipeline = self.components.image_pipeline(self.config)
        return ImageDataset(index, pipeline.train if train else pipeline.eval)

    def _feature_dataset(self, index: LabelIndex, name: str) -> FeatureDataset:
        pooling = config_pooling(self.config)
        cached = ensure_features(
            self.config, self.components, index, pooling, self.context, Extraction(name=name)
        )
        return FeatureDataset(cached, index.targets, dense=pooling == "dense")


def build_inputs(
    config: TrainConfig,
    components: Components,
    context: distributed.Context,
    channels_last: bool = False,
    features: bool | None = None,
) -> Inputs:
    """The inputs `config.model.input` asks for (`features` overrides it: the zero-shot
    baseline of a features config reads features too)."""
    if features is None:
        features = config.model.input == "features"
    device = context.device
    if features:
        options = LoaderOptions(workers=0, pin_memory=device.type == "cuda")
        return Inputs(config, components, context, FeatureInput(device), options, True)
    pipeline = components.image_pipeline(config)
    model_input = components.model_input(pipeline, device, channels_last)
    options = LoaderOptions.from_config(config.data, device)
    return Inputs(config, components, context, model_input, options, False)
