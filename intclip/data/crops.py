"""Crop geometry drawn on a file's full-size header, and the reduced-scale decode that applies it.

The CPU workers (`image_pipeline`) and the GPU decoding stage (`device_decode`) draw their crops
here, so both paths cut the same regions from the same seeds.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as F

from intclip.data.shrink import CROP_RATIO

Box = tuple[float, float, float, float]  # left, top, right, bottom in full-size pixels


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
