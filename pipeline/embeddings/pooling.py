"""Scoring against each description, then pooling: the per-description form of class text.

An image is compared with every description of a class and the K similarities are pooled into
the class's one similarity (`ClassTextPooling`), instead of comparing it with the average of
the descriptions' embeddings. `mean` of the similarities equals the cosine with the average
embedding times that average's length, a per-class constant; `max` lets one description that
fits win; `softmax` weighs each similarity by a softmax over them at a temperature, between the
two. The zero-shot scorer and the intclip heads pool with this one function.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pipeline.embeddings.class_embedding import ClassTextPooling

DESCRIPTION_TEMPERATURE = 100.0
"""The softmax pooling's temperature: CLIP's own logit scale, so the weights are those CLIP
would give the descriptions as competing texts."""


def _softmax(similarity: torch.Tensor, dim: int, temperature: float) -> torch.Tensor:
    weights = torch.softmax(temperature * similarity, dim=dim)
    return (weights * similarity).sum(dim=dim)


POOLINGS: dict[str, Callable[[torch.Tensor, int, float], torch.Tensor]] = {
    "mean": lambda similarity, dim, temperature: similarity.mean(dim=dim),
    "max": lambda similarity, dim, temperature: similarity.amax(dim=dim),
    "softmax": _softmax,
}
"""The per-description poolings; `embedding` is not one: its texts are averaged before
scoring."""


def pool_descriptions(
    similarity: torch.Tensor,
    pooling: ClassTextPooling,
    dim: int,
    temperature: float = DESCRIPTION_TEMPERATURE,
) -> torch.Tensor:
    """Similarities with each description (along `dim`, K long) pooled into one, `dim`
    removed."""
    return POOLINGS[pooling](similarity, dim, temperature)


def description_similarity(
    images: torch.Tensor, descriptions: torch.Tensor, pooling: ClassTextPooling
) -> torch.Tensor:
    """Cosine similarity [B, N] of image embeddings [B, D] with N classes' descriptions
    [N, K, D], each description scored, then pooled over K."""
    images = torch.nn.functional.normalize(images.float(), dim=-1)
    descriptions = torch.nn.functional.normalize(descriptions.float(), dim=-1)
    return pool_descriptions(torch.einsum("bd,nkd->bnk", images, descriptions), pooling, dim=2)
