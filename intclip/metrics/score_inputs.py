"""Score and label matrices: the one definition of the files `eval` and `zeroshot` write and
`intclip-train score` reads, and the reader, so that every fault names its file.

`intclip-train score` compares methods trained elsewhere; their .npy files are checked for
shape, dtype, range and finiteness before any metric is computed, and never unpickled.
"""

from __future__ import annotations

import math
import os
from io import BytesIO
from pathlib import Path
from typing import BinaryIO

import numpy as np

from intclip.metrics.multilabel import MIN_CLASSES
from pipeline.common.errors import UserError
from pipeline.common.files import atomic_write_bytes, open_regular

_NPY_HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}
_NUMERIC_KINDS = "biuf"


def scores_file(directory: Path, split: str) -> Path:
    """Where a split's scores [images, classes] are saved: `<split>_scores.npy`."""
    return Path(directory) / f"{split}_scores.npy"


def labels_file(directory: Path, split: str) -> Path:
    """Where the split's 0/1 labels of the same shape are saved: `<split>_labels.npy`."""
    return Path(directory) / f"{split}_labels.npy"


def save_score_split(directory: Path, split: str, labels: np.ndarray, scores: np.ndarray) -> None:
    """Write one split's labels and scores where `score --val-scores ...` can read them."""
    for path, array in (
        (labels_file(directory, split), labels),
        (scores_file(directory, split), scores),
    ):
        buffer = BytesIO()
        np.save(buffer, array, allow_pickle=False)
        atomic_write_bytes(path, buffer.getvalue())


def _read_npy_header(path: Path, handle: BinaryIO) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from the header, so a wrong file is named before its data is read."""
    try:
        version = np.lib.format.read_magic(handle)
    except (ValueError, EOFError) as err:
        raise UserError(f"{path}: not a .npy file (no NumPy header)") from err
    read_header = _NPY_HEADER_READERS.get(version)
    if read_header is None:
        raise UserError(f"{path}: unsupported .npy format version {version[0]}.{version[1]}")
    try:
        shape, _fortran_order, dtype = read_header(handle)
    except (ValueError, EOFError) as err:
        raise UserError(f"{path}: corrupt .npy header ({err})") from err
    return shape, dtype


def _read_matrix(path: Path) -> np.ndarray:
    """A non-empty 2-D numeric array from a .npy file; pickled objects are never loaded."""
    try:
        with open_regular(path) as handle:
            shape, dtype = _read_npy_header(path, handle)
            if dtype.hasobject:
                raise UserError(f"{path}: holds Python objects; save a numeric array instead")
            if dtype.kind not in _NUMERIC_KINDS:
                raise UserError(f"{path}: dtype {dtype} is not numeric")
            if len(shape) != 2:
                raise UserError(f"{path}: expected a 2-D (images x classes) array, got {shape}")
            if 0 in shape:
                raise UserError(f"{path}: empty array of shape {shape}")
            claimed = math.prod(shape) * dtype.itemsize
            held = os.fstat(handle.fileno()).st_size - handle.tell()
            if claimed > held:  # checked before numpy allocates what the header claims
                raise UserError(
                    f"{path}: its header claims shape {shape} ({claimed:,} bytes) but the file "
                    f"holds {held:,} bytes of data: truncated or not a real array"
                )
            handle.seek(0)
            try:
                return np.lib.format.read_array(handle, allow_pickle=False)
            except (ValueError, EOFError) as err:
                raise UserError(f"{path}: truncated or corrupt .npy data ({err})") from err
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from err
    except ValueError as err:  # open() refuses a path with a NUL byte
        raise UserError(f"{path!s}: cannot read ({err})") from err


def _first_index(mask: np.ndarray) -> tuple[int, int]:
    row, column = np.argwhere(mask)[0]
    return int(row), int(column)


def _check_labels(path: Path, labels: np.ndarray) -> None:
    """Labels are 0/1 with at least one positive, or no metric means anything."""
    not_binary = ~np.isin(labels, (0, 1))
    if not_binary.any():
        row, column = _first_index(not_binary)
        raise UserError(
            f"{path}: labels must be 0 or 1, found {labels[row, column]} "
            f"at row {row}, class {column}"
        )
    if not labels.any():
        raise UserError(f"{path}: no positive label at all")


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    """Logistic function in its tanh form, which cannot overflow for large logits."""
    return 0.5 * (1.0 + np.tanh(0.5 * logits))


def _as_probabilities(path: Path, scores: np.ndarray, sigmoid: bool) -> np.ndarray:
    """Finite scores in [0, 1], the range the threshold grid is defined on."""
    scores = scores.astype(np.float64)
    not_finite = ~np.isfinite(scores)
    if not_finite.any():
        row, column = _first_index(not_finite)
        raise UserError(
            f"{path}: score {scores[row, column]} at row {row}, class {column} is not finite"
        )
    if sigmoid:
        scores = _sigmoid(scores)
    out_of_range = (scores < 0.0) | (scores > 1.0)
    if out_of_range.any():
        row, column = _first_index(out_of_range)
        raise UserError(
            f"{path}: score {scores[row, column]} at row {row}, class {column} is outside "
            "[0, 1]; pass --sigmoid if the scores are logits"
        )
    return scores


def read_score_split(
    scores_path: Path, labels_path: Path, sigmoid: bool
) -> tuple[np.ndarray, np.ndarray]:
    """One split's (probabilities, labels), checked so every fault names its file."""
    scores = _read_matrix(scores_path)
    labels = _read_matrix(labels_path)
    if scores.shape != labels.shape:
        raise UserError(
            f"{scores_path} has shape {scores.shape} but {labels_path} has shape "
            f"{labels.shape}; scores and labels must match"
        )
    if labels.shape[1] < MIN_CLASSES:
        raise UserError(
            f"{labels_path}: one class column; multi-label scoring needs at least {MIN_CLASSES}"
        )
    _check_labels(labels_path, labels)
    return _as_probabilities(scores_path, scores, sigmoid), labels
