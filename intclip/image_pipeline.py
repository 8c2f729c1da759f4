"""The image pipeline that feeds a GPU: decode less on the CPU, finish on the device.

The plain torchvision path decodes every JPEG at full size, crops and resizes the full image,
and converts to normalised floats in the worker. The fast path (`data.pipeline: fast`):

- asks libjpeg for the smallest DCT scale (1/2, 1/4, 1/8) whose image still holds at least
  `size` pixels across the crop, so the crop is never upsampled more than at full size;
- crops and resizes that smaller image in one PIL call (`resize(box=...)`), with the crop
  drawn in full-size coordinates exactly as torchvision draws it (same distribution);
- returns uint8 tensors, a quarter of the bytes through worker pipes, pinned memory and the bus;
  `ModelInput` converts and normalises them on the device.

Both paths take the opened, not yet decoded, file: deciding the scale needs the header only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as F

from intclip.config import AugmentConfig, DataConfig
from intclip.shrink import CROP_RATIO
from intclip.transforms import eval_transform, train_transform

Box = tuple[float, float, float, float]  # left, top, right, bottom in full-size pixels
FileTransform = Callable[[Image.Image], torch.Tensor]


def draft_resize(image: Image.Image, box: Box, size: int) -> Image.Image:
    """`image` cropped to `box` (full-size coordinates) and resized to size x size, decoded at
    the smallest JPEG scale that keeps at least `size` pixels across the box."""
    width, height = image.size
    box_w, box_h = box[2] - box[0], box[3] - box[1]
    wanted = (math.ceil(width * size / box_w), math.ceil(height * size / box_h))
    image.draft("RGB", wanted)  # a no-op for other formats and when no scale fits
    scale_x, scale_y = image.size[0] / width, image.size[1] / height
    scaled = (box[0] * scale_x, box[1] * scale_y, box[2] * scale_x, box[3] * scale_y)
    return image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC, box=scaled)


def center_crop_box(width: int, height: int, size: int) -> Box:
    """The region torchvision's Resize(size) + CenterCrop(size) keeps, in full-size pixels."""
    short, long = min(width, height), max(width, height)
    resized_long = int(size * long / short)
    new_w, new_h = (size, resized_long) if width <= height else (resized_long, size)
    left = round((new_w - size) / 2.0)
    top = round((new_h - size) / 2.0)
    fx, fy = width / new_w, height / new_h
    return left * fx, top * fy, (left + size) * fx, (top + size) * fy


def squash_box(width: int, height: int, size: int) -> Box:
    """The whole image, squashed to a square (`data.eval_resize: squash`)."""
    return 0.0, 0.0, float(width), float(height)


EVAL_BOXES: dict[str, Callable[[int, int, int], Box]] = {
    "crop": center_crop_box,
    "squash": squash_box,
}


def eval_box(resize: str, width: int, height: int, size: int) -> Box:
    """The region `data.eval_resize` keeps of a width x height image."""
    return EVAL_BOXES[resize](width, height, size)


def train_box(image: Image.Image, scale: tuple[float, float]) -> Box:
    """RandomResizedCrop's region, drawn on the full-size geometry (the header suffices)."""
    top, left, height, width = T.RandomResizedCrop.get_params(image, scale, CROP_RATIO)
    return left, top, left + width, top + height


def to_uint8_tensor(image: Image.Image) -> torch.Tensor:
    """[3, H, W] uint8: what workers send; `ModelInput` makes floats of it on the device."""
    return F.pil_to_tensor(image)


class FastEval:
    """The evaluation view (`data.eval_resize`: crop or squash) as uint8, decoded small."""

    def __init__(self, size: int, resize: str = "crop") -> None:
        self.size, self.resize = size, resize

    def __call__(self, image: Image.Image) -> torch.Tensor:
        box = eval_box(self.resize, *image.size, self.size)
        return to_uint8_tensor(draft_resize(image, box, self.size))


class FastTrain:
    """RandomResizedCrop (drawn on the full-size geometry), flip and RandAugment, as uint8."""

    def __init__(self, size: int, augment: AugmentConfig) -> None:
        self.size = size
        self.scale = augment.crop_scale
        after: list[Callable] = []
        if augment.flip:
            after.append(T.RandomHorizontalFlip())
        if augment.randaugment_ops:
            after.append(
                T.RandAugment(
                    num_ops=augment.randaugment_ops, magnitude=augment.randaugment_magnitude
                )
            )
        self.after = T.Compose(after)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        crop = draft_resize(image, train_box(image, self.scale), self.size)
        return to_uint8_tensor(self.after(crop))


def _rgb(image: Image.Image) -> Image.Image:
    return image.convert("RGB")


@dataclass(frozen=True)
class ImagePipeline:
    """What the datasets apply to each opened file, and what the batch needs on the device."""

    train: FileTransform
    eval: FileTransform
    normalized_on_device: bool
    device_decode: Callable[[torch.device], Callable[[Any], torch.Tensor]] | None = None
    """`data.decode: gpu`: makes the stage that turns a batch of files into images there."""


def build_image_pipeline(
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    augment: AugmentConfig,
    data: DataConfig,
) -> ImagePipeline:
    """`data.pipeline`: `fast` (uint8 out, finished on the device) or `torchvision` (floats
    out, as before); `data.decode: gpu` leaves decoding to the device as well. All honour
    `augment.enabled`, `data.eval_resize` and `data.normalize`."""
    if data.decode == "gpu":
        # imported here: device_decode builds on this module's crops
        from intclip.device_decode import DeviceDecode, EncodedEval, EncodedTrain

        on_device = augment if augment.enabled else None
        encoded_eval = EncodedEval(size, data.eval_resize)
        return ImagePipeline(
            EncodedTrain(size, augment) if augment.enabled else encoded_eval,
            encoded_eval,
            True,
            lambda device: DeviceDecode(size, on_device, device),
        )
    if data.pipeline == "fast":
        fast_eval = FastEval(size, data.eval_resize)
        fast_train = FastTrain(size, augment) if augment.enabled else fast_eval
        return ImagePipeline(fast_train, fast_eval, True)
    plain_train = train_transform(size, mean, std, augment, data)
    plain_eval = eval_transform(size, mean, std, data)
    return ImagePipeline(
        T.Compose([_rgb, plain_train]), T.Compose([_rgb, plain_eval]), normalized_on_device=False
    )


class ModelInput:
    """A batch from the loader as the model takes it: on the device (uint8 while it travels, or
    files that `decode` turns into images there), normalised there when the workers did not,
    in the tower's memory format."""

    def __init__(
        self,
        device: torch.device,
        mean: Sequence[float],
        std: Sequence[float],
        normalize: bool,
        channels_last: bool = False,
        decode: Callable[[Any], torch.Tensor] | None = None,
    ) -> None:
        self.device = device
        self.decode = decode
        self.normalize = normalize
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        shape = (1, -1, 1, 1)
        # (x / 255 - mean) / std as one multiply-add: x * scale + shift
        std_t = torch.tensor(std, dtype=torch.float32, device=device).view(shape)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(shape)
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = -mean_t / std_t

    def __call__(self, images: Any) -> torch.Tensor:
        if self.decode is not None:
            images = self.decode(images)
        images = images.to(self.device, non_blocking=True)
        if self.normalize:
            images = torch.addcmul(self.shift, images.float(), self.scale)
        return images.contiguous(memory_format=self.memory_format)
