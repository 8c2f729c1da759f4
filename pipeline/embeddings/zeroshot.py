"""Plain CLIP against class embeddings: the sanity check before training, and its baseline."""

from __future__ import annotations

import torch
from torch import nn

from pipeline.clip.loading import LoadedClip
from pipeline.embeddings.class_embedding import ClassTextPooling
from pipeline.embeddings.pooling import description_similarity


class ZeroShotCLIP(nn.Module):
    """CLIP's own image embedding scored against the class embeddings, nothing trained.

    Scores are CLIP's zero-shot probabilities: a softmax over classes of the scaled cosine
    similarities, as CLIP was trained to compare one image with many texts. `on_features`: the
    inputs are CLIP's image embeddings already computed (cached features), not images.
    `class_embeddings` [N, D] are scored as they are; description embeddings [N, K, D] each,
    their similarities pooled by `pooling` (`pipeline.embeddings.pooling`).
    """

    def __init__(
        self,
        clip: LoadedClip,
        class_embeddings: torch.Tensor,
        on_features: bool = False,
        pooling: ClassTextPooling = "embedding",
    ) -> None:
        super().__init__()
        if (class_embeddings.ndim == 3) != (pooling != "embedding"):
            raise ValueError(
                f"pooling {pooling!r} got texts of shape {tuple(class_embeddings.shape)}"
            )
        self.clip = clip.module
        self.on_features = on_features
        self.pooling = pooling
        self.register_buffer("class_embeddings", class_embeddings.float())

    @property
    def num_classes(self) -> int:
        return len(self.class_embeddings)

    def forward(self, inputs: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
        if isinstance(inputs, tuple):  # cached features with their dense map: the embedding
            inputs = inputs[0]
        features = inputs if self.on_features else self.clip.encode_image(inputs)
        features = torch.nn.functional.normalize(features.float(), dim=-1)
        if self.pooling == "embedding":
            return self.clip.logit_scale.exp() * features @ self.class_embeddings.T
        similarity = description_similarity(features, self.class_embeddings, self.pooling)
        return self.clip.logit_scale.exp() * similarity

    @staticmethod
    def scores(logits: torch.Tensor) -> torch.Tensor:
        return logits.softmax(dim=-1)
