"""Images in: finding the files a user names, and CLIP's own evaluation transform.

Every stage that shows CLIP an image (the zero-shot check here, evaluation and prediction in
`intclip`) resizes, crops and normalises it this one way, with the CLIP's own mean and std.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image
from torchvision import transforms as T

from pipeline.common.errors import UserError
from pipeline.common.files import NotARegularFile
from pipeline.common.image_errors import DECODE_ERRORS, opened_image

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
BICUBIC = T.InterpolationMode.BICUBIC
ImageTransform = Callable[[Image.Image], torch.Tensor]


def list_images(paths: Sequence[Path], recursive: bool = False) -> list[Path]:
    """Image files named directly, in argument order, and the images (regular files with an
    image suffix) in named directories, sorted by name within each; `recursive` also walks
    their subdirectories (not symlinked ones, which could loop), each after its parent's own
    images."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found += _images_in(path, recursive)
        elif path.is_file():
            found.append(path)
        elif path.exists():
            kind = NotARegularFile(path, path.stat().st_mode).kind
            raise UserError(f"{path}: not a regular file but {kind}, and not a directory")
        else:
            raise UserError(f"{path}: no such image or directory")
    if not found:
        named = ", ".join(map(str, paths))
        raise UserError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {named}")
    return found


def _images_in(folder: Path, recursive: bool) -> list[Path]:
    try:
        entries = sorted(folder.iterdir())
    except OSError as err:
        raise UserError(f"{folder}: cannot list this directory ({err.strerror})") from err
    # regular files only (links to them too): a FIFO named like an image would block forever
    found = [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    if recursive:
        for sub in entries:
            if sub.is_dir() and not sub.is_symlink():
                found += _images_in(sub, recursive)
    return found


def open_image(path: Path) -> Image.Image:
    """An RGB image, or one line naming the file that is not one."""
    try:
        with opened_image(path) as image:
            return image.convert("RGB")
    except DECODE_ERRORS as err:
        raise UserError(f"{path}: cannot read this image ({err})") from err


def eval_transform(size: int, mean: Sequence[float], std: Sequence[float]) -> ImageTransform:
    """Resize the shorter side, center crop, normalise: what CLIP saw in pre-training."""
    return T.Compose(
        [
            T.Resize(size, interpolation=BICUBIC),
            T.CenterCrop(size),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )
