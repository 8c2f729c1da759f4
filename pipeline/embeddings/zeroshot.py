"""Plain CLIP against class embeddings: the sanity check before training, and its baseline."""

from __future__ import annotations

import torch
from torch import nn

from pipeline.clip.loading import LoadedClip


class ZeroShotCLIP(nn.Module):
    """CLIP's own image embedding scored against the class embeddings, nothing trained.

    Scores are CLIP's zero-shot probabilities: a softmax over classes of the scaled cosine
    similarities, as CLIP was trained to compare one image with many texts. `on_features`: the
    inputs are CLIP's image embeddings already computed (cached features), not images.
    """

    def __init__(
        self, clip: LoadedClip, class_embeddings: torch.Tensor, on_features: bool = False
    ) -> None:
        super().__init__()
        self.clip = clip.module
        self.on_features = on_features
        self.register_buffer("class_embeddings", class_embeddings.float())

    @property
    def num_classes(self) -> int:
        return len(self.class_embeddings)

    def forward(self, inputs: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
        if isinstance(inputs, tuple):  # cached features with their dense map: the embedding
            inputs = inputs[0]
        features = inputs if self.on_features else self.clip.encode_image(inputs)
        features = torch.nn.functional.normalize(features.float(), dim=-1)
        return self.clip.logit_scale.exp() * features @ self.class_embeddings.T

    @staticmethod
    def scores(logits: torch.Tensor) -> torch.Tensor:
        return logits.softmax(dim=-1)
