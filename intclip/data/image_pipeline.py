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

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torchvision import transforms as T

from intclip.data.config import AugmentConfig, DataConfig
from intclip.data.crops import draft_resize, eval_box, to_uint8_tensor, train_box
from intclip.data.device_decode import DeviceDecode, EncodedEval, EncodedTrain
from intclip.data.transforms import eval_transform, train_transform

FileTransform = Callable[[Image.Image], torch.Tensor]


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
