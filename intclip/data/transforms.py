"""Image transforms of training and evaluation, as the data and augment config say.

The official code defined an augmentation it never applied, squashed images to a square and fed
them without CLIP's mean/std. Here, by default, augmentation is really applied and every image
is centre-cropped and normalised as CLIP saw it in pre-training; `augment.enabled`,
`data.eval_resize` and `data.normalize` reproduce the official choices, for parity only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torchvision import transforms as T

from intclip.data.config import AugmentConfig, DataConfig
from intclip.data.shrink import CROP_RATIO
from pipeline.clip.images import BICUBIC, ImageTransform

RESIZES: dict[str, Callable[[int], list[Callable]]] = {
    "crop": lambda size: [T.Resize(size, interpolation=BICUBIC), T.CenterCrop(size)],
    "squash": lambda size: [T.Resize((size, size), interpolation=BICUBIC)],
}


def _to_tensor(
    steps: list[Callable], mean: Sequence[float], std: Sequence[float], data: DataConfig
) -> ImageTransform:
    steps = [*steps, T.ToTensor()]
    if data.normalize:
        steps.append(T.Normalize(mean, std))
    return T.Compose(steps)


def eval_transform(
    size: int, mean: Sequence[float], std: Sequence[float], data: DataConfig
) -> ImageTransform:
    """Resize as `data.eval_resize` says, then (unless turned off) CLIP's normalisation."""
    return _to_tensor(RESIZES[data.eval_resize](size), mean, std, data)


def train_transform(
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    augment: AugmentConfig,
    data: DataConfig,
) -> ImageTransform:
    """Random resized crop, horizontal flip and RandAugment, then CLIP's normalisation; the
    evaluation transform when augmentation is off."""
    if not augment.enabled:
        return eval_transform(size, mean, std, data)
    steps: list[Callable] = [
        T.RandomResizedCrop(size, scale=augment.crop_scale, ratio=CROP_RATIO, interpolation=BICUBIC)
    ]
    if augment.flip:
        steps.append(T.RandomHorizontalFlip())
    if augment.randaugment_ops:
        steps.append(
            T.RandAugment(num_ops=augment.randaugment_ops, magnitude=augment.randaugment_magnitude)
        )
    return _to_tensor(steps, mean, std, data)
