"""Opening an image file safely, and what PIL raises for one that is not a readable image, in
one torch-free place.

Every command that opens images (check-data, run, eval, zeroshot, predict, download, prepare)
opens them with `opened_image`: only a regular file is opened (a FIFO would block forever),
and its size, known from the header before any pixel is decoded, is bounded: at most
`max_image_pixels()` pixels (INTCLIP_MAX_IMAGE_PIXELS, default 100 million), and sides at most
MAX_ASPECT_RATIO apart, since resizing the shorter side of a 1 x 20,000,000 strip to 224 pixels
would make it 4.5 billion pixels wide. PIL's own limit (which refuses twice its value, at open)
is raised to the bound where it is lower, so that this check is the one that speaks.

PIL raises more than OSError: ValueError for bad header fields, SyntaxError for some broken PNG
chunks found only while decoding, DecompressionBombError for absurd sizes. Every reader that
turns these into a one-line error (the zero-shot check and prediction, check-data, download)
catches this one tuple; a refused file (`NotARegularFile`, an OSError; `ImageTooLarge`, a
ValueError) is among them.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from pipeline.common.errors import UserError
from pipeline.common.files import open_regular

MAX_PIXELS_ENV = "INTCLIP_MAX_IMAGE_PIXELS"
DEFAULT_MAX_IMAGE_PIXELS = 100_000_000
MAX_ASPECT_RATIO = 100
"""The longer side at most this many times the shorter: resized for the model, such an image
still has a bounded number of pixels (100 x 448 x 448 = 20 million at most)."""

DECODE_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    UnidentifiedImageError,
    ValueError,
    SyntaxError,
    Image.DecompressionBombError,
)


class ImageTooLarge(ValueError):
    """An image whose decoded pixels would exceed the bound."""


def max_image_pixels() -> int:
    """The most pixels an image may have: INTCLIP_MAX_IMAGE_PIXELS, else 100 million."""
    given = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not given:
        return DEFAULT_MAX_IMAGE_PIXELS
    try:
        value = int(given)
    except ValueError:
        value = 0
    if value < 1:
        raise UserError(f"{MAX_PIXELS_ENV}={given!r}: must be a whole number of pixels, at least 1")
    return value


def size_problem(width: int, height: int, limit: int) -> str | None:
    """Why an image of this size is refused with at most `limit` pixels, or None."""
    if width * height > limit:
        return (
            f"{width}x{height} is {width * height:,} pixels, more than the {limit:,} an image may "
            f"have (set {MAX_PIXELS_ENV} to allow more)"
        )
    if max(width, height) > MAX_ASPECT_RATIO * max(1, min(width, height)):
        return f"{width}x{height}: one side is more than {MAX_ASPECT_RATIO} times the other"
    return None


@contextmanager
def opened_image(path: Path) -> Iterator[Image.Image]:
    """The image at `path`, opened (not yet decoded) only if it is a regular file of bounded
    size; raises one of DECODE_ERRORS otherwise."""
    limit = max_image_pixels()
    if (Image.MAX_IMAGE_PIXELS or limit) < limit:  # PIL's own check must not refuse first
        Image.MAX_IMAGE_PIXELS = limit
    with open_regular(path) as handle, Image.open(handle) as image:
        problem = size_problem(*image.size, limit)
        if problem is not None:
            raise ImageTooLarge(problem)
        image.filename = os.fspath(path)  # as when PIL opens a path: readers may use it
        yield image


# Between PIL's limit and twice it, PIL only warns: `opened_image` refuses those images itself.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
