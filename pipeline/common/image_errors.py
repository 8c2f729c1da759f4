"""What PIL raises for a file that is not a readable image, in one torch-free place.

PIL raises more than OSError: ValueError for bad header fields, SyntaxError for some broken PNG
chunks found only while decoding, DecompressionBombError for absurd sizes. Every reader that
turns these into a one-line error (the zero-shot check and prediction, check-data, download)
catches this one tuple.
"""

from __future__ import annotations

from PIL import Image, UnidentifiedImageError

DECODE_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    UnidentifiedImageError,
    ValueError,
    SyntaxError,
    Image.DecompressionBombError,
)
