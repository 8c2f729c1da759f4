"""Images stored smaller, once, so that training decodes small files: one definition of the
resize shared by `download --resize-short-side` and `prepare`, and the rule for how small.

The rule. RandomResizedCrop draws a crop of area s * W * H (s >= s_min) with aspect ratio r in
[3/4, 4/3], then resizes it to S x S. Its narrowest side is sqrt(s * W * H * min(r, 1/r)) >=
sqrt(s_min * 3/4) * short side. So with

    short side >= S * sqrt(4 / (3 * s_min))      (S = 224, s_min = 0.5: 366 pixels)

every crop of the stored image still spans at least S pixels each way: it is only ever
shrunk to S, never enlarged, as from the original (an original already smaller is stored as
it is). The evaluation view (shorter side to S, centre crop) needs only short side >= S. What
changes is the source of those pixels: a Lanczos downscale then a bicubic one instead of one
bicubic downscale, and one JPEG re-encoding at quality 90. No torch here.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

from PIL import Image

from pipeline.common.image_errors import opened_image

RESIZE_JPEG_QUALITY = 90
RESIZE_FILTER = Image.Resampling.LANCZOS
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
"""RandomResizedCrop's aspect-ratio range (torchvision's default), in both pipelines."""
DEFAULT_CROP_SCALE_MIN = 0.5
"""`augment.crop_scale`'s default lower end."""


def smallest_short_side(crop_size: int, crop_scale_min: float) -> int:
    """The shortest stored short side whose every training crop spans `crop_size` pixels."""
    return math.ceil(crop_size * math.sqrt(1.0 / (crop_scale_min * CROP_RATIO[0])))


def shrink(source: Path, destination: Path, short_side: int, suffix: str) -> bool:
    """Write `source` to `destination` with its shorter side `short_side`, in the format that
    `suffix` (the final file name's) names; False, writing nothing, when it is that small
    already (images are never enlarged). `destination` may be `source`: the image is read
    before it is written."""
    with opened_image(source) as image:
        scale = short_side / min(image.size)
        if scale >= 1:
            return False
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image_format = Image.registered_extensions().get(suffix.lower(), image.format)
        small = image.resize(size, RESIZE_FILTER)
    if image_format == "JPEG":
        small.convert("RGB").save(destination, "JPEG", quality=RESIZE_JPEG_QUALITY)
    else:
        small.save(destination, image_format)
    return True


def shrink_or_copy(source: Path, destination: Path, short_side: int, suffix: str) -> bool:
    """`shrink`, or a byte-for-byte copy of an image that is small already; True if shrunk."""
    if shrink(source, destination, short_side, suffix):
        return True
    shutil.copyfile(source, destination)
    return False
