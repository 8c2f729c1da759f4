"""`data.decode: gpu`: workers read bytes, the GPU decodes (nvJPEG), crops, resizes, augments.

Workers do only what needs no pixels: read the file, read the JPEG header for its size and
draw the crop exactly as the CPU path draws it (same sampler, same per-item seed), then a seed
for the item's flip and RandAugment. The main process decodes the batch's JPEGs in one
`torchvision.io.decode_jpeg(device=...)` call and, per image, crops and resizes (bicubic,
antialiased) and augments with `torchvision.transforms.v2` on the uint8 tensor, under that seed:
the same distributions as the CPU path, drawn per image. A file that is no baseline RGB or grey
JPEG (PNG, CMYK, ...) is decoded and cropped by the worker as on the CPU path and only
augmented on the device.

Tests run the device half on the CPU (`decode_jpeg` decodes there too), so it is covered
without CUDA; the CUDA-only test checks that nvJPEG gives the same tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from intclip.data.config import AugmentConfig
from intclip.data.crops import Box, draft_resize, eval_box, to_uint8_tensor, train_box

DEVICE_DECODABLE_MODES = frozenset({"RGB", "L"})
SEED_RANGE = 2**62


@dataclass(frozen=True)
class EncodedImage:
    """What a worker sends: the file's bytes (`encoded`) or, for other files, the cropped
    uint8 image; the crop in full-size pixels; the seed of its augmentation (None: eval)."""

    data: torch.Tensor
    encoded: bool
    box: Box
    seed: int | None


def encode(image: Image.Image, box: Box, size: int, seed: int | None) -> EncodedImage:
    """The opened file as the device stage takes it."""
    if image.format == "JPEG" and image.mode in DEVICE_DECODABLE_MODES:
        data = torch.frombuffer(bytearray(Path(image.filename).read_bytes()), dtype=torch.uint8)
        return EncodedImage(data, True, box, seed)
    return EncodedImage(to_uint8_tensor(draft_resize(image, box, size)), False, box, seed)


class EncodedTrain:
    """The training crop drawn as `FastTrain` draws it, and a seed for the device's augmentation."""

    def __init__(self, size: int, augment: AugmentConfig) -> None:
        self.size, self.scale = size, augment.crop_scale

    def __call__(self, image: Image.Image) -> EncodedImage:
        box = train_box(image, self.scale)
        seed = int(torch.randint(0, SEED_RANGE, ()).item())
        return encode(image, box, self.size, seed)


class EncodedEval:
    """The evaluation view (`data.eval_resize`), left to the device."""

    def __init__(self, size: int, resize: str = "crop") -> None:
        self.size, self.resize = size, resize

    def __call__(self, image: Image.Image) -> EncodedImage:
        return encode(image, eval_box(self.resize, *image.size, self.size), self.size, None)


def device_augmentation(augment: AugmentConfig | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Flip and RandAugment of one uint8 [3, S, S] image, as `FastTrain` applies them in PIL."""
    steps: list[Callable] = []
    if augment is not None and augment.flip:
        steps.append(v2.RandomHorizontalFlip())
    if augment is not None and augment.randaugment_ops:
        steps.append(v2.RandAugment(augment.randaugment_ops, augment.randaugment_magnitude))
    return v2.Compose(steps) if steps else (lambda image: image)


class DeviceDecode:
    """A batch of `EncodedImage`s -> uint8 [B, 3, S, S] on `device`."""

    def __init__(self, size: int, augment: AugmentConfig | None, device: torch.device) -> None:
        self.size, self.device = size, device
        self.augment = device_augmentation(augment)

    def __call__(self, batch: Sequence[EncodedImage]) -> torch.Tensor:
        files = [item.data for item in batch if item.encoded]
        decoded = iter(
            decode_jpeg(files, mode=ImageReadMode.RGB, device=self.device) if files else []
        )
        images = []
        for item in batch:
            if item.encoded:
                image = self._crop(next(decoded), item.box)
            else:
                image = item.data.to(self.device, non_blocking=True)
            if item.seed is not None:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(item.seed)
                    image = self.augment(image)
            images.append(image)
        return torch.stack(images)

    def _crop(self, image: torch.Tensor, box: Box) -> torch.Tensor:
        left, top, right, bottom = (round(v) for v in box)
        return F.resized_crop(
            image,
            top,
            left,
            bottom - top,
            right - left,
            [self.size, self.size],
            interpolation=v2.InterpolationMode.BICUBIC,
            antialias=True,
        )
