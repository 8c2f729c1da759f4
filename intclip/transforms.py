"""The training transform: augmentation really applied, then CLIP's own normalisation.

The official code defined an augmentation it never applied and fed images without CLIP's
mean/std; here both transforms end in CLIP's own normalisation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torchvision import transforms as T

from intclip.config import AugmentConfig
from pipeline.images import BICUBIC, ImageTransform


def train_transform(
    size: int, mean: Sequence[float], std: Sequence[float], augment: AugmentConfig
) -> ImageTransform:
    """Random resized crop, horizontal flip and RandAugment, then CLIP's normalisation."""
    steps: list[Callable] = [
        T.RandomResizedCrop(size, scale=augment.crop_scale, interpolation=BICUBIC)
    ]
    if augment.flip:
        steps.append(T.RandomHorizontalFlip())
    if augment.randaugment_ops:
        steps.append(
            T.RandAugment(num_ops=augment.randaugment_ops, magnitude=augment.randaugment_magnitude)
        )
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(steps)
