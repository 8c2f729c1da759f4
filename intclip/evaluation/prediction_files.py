"""`predict --output F`: one row per image, written batch by batch, continued after a kill.

The format follows the suffix: `.csv` (columns `image`, `error`, `predicted`, then one
probability column `<level>:<id>` per taxonomy node) or `.jsonl` (one JSON object per line:
`image`, `error`, `intents` with every node of every level). Each batch is appended in one write
and flushed to disk, so a killed run leaves whole rows, at most followed by part of one; the
next run with the same `--output` cuts that part off and skips the images already there.
An unreadable image gets a row with its `error`, so it is listed and not tried again.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import IO

from intclip.evaluation.predict import ImagePrediction
from pipeline.common.errors import UserError
from pipeline.common.files import open_regular

Node = tuple[str, str]  # (level, id)


def output_suffix(path: Path) -> str:
    """The format `--output` names by its suffix, checked before any model is loaded."""
    suffix = Path(path).suffix.lower()
    if suffix not in _FORMATS:
        raise UserError(
            f"--output {path}: unknown format {suffix or '(no suffix)'!r}; "
            f"use {' or '.join(_FORMATS)}"
        )
    return suffix


def _csv_text(rows: Iterable[list]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def _csv_header(nodes: list[Node]) -> list[str]:
    return ["image", "error", "predicted", *(f"{level}:{node}" for level, node in nodes)]


def _csv_row(prediction: ImagePrediction, nodes: list[Node]) -> list:
    probability = {(i.level, i.id): i.probability for i in prediction.intents}
    predicted = ";".join(f"{i.level}:{i.id}" for i in prediction.intents if i.predicted)
    return [
        prediction.image,
        prediction.error or "",
        predicted,
        *(probability.get(node, "") for node in nodes),
    ]


def _csv_rows(predictions: Iterable[ImagePrediction], nodes: list[Node]) -> str:
    return _csv_text(_csv_row(p, nodes) for p in predictions)


def _jsonl_rows(predictions: Iterable[ImagePrediction], nodes: list[Node]) -> str:
    return "".join(json.dumps(asdict(p), ensure_ascii=False) + "\n" for p in predictions)


def _csv_images(path: Path, text: str, nodes: list[Node]) -> list[str]:
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        return []
    if rows[0] != _csv_header(nodes):
        raise UserError(
            f"{path}: its columns are not this run's ({len(rows[0])} vs "
            f"{len(_csv_header(nodes))}, or other classes); choose another --output"
        )
    return [row[0] for row in rows[1:] if row]


def _jsonl_images(path: Path, text: str, nodes: list[Node]) -> list[str]:
    images = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            images.append(json.loads(line)["image"])
        except (json.JSONDecodeError, TypeError, KeyError):
            raise UserError(
                f"{path}:{number}: not a prediction row; choose another --output"
            ) from None
    return images


_JSONL_ROW_START = '{"image": '  # json.dumps of an ImagePrediction starts so

_FORMATS: dict[str, tuple[Callable, Callable, Callable | None]] = {
    ".csv": (_csv_rows, _csv_images, _csv_header),
    ".jsonl": (_jsonl_rows, _jsonl_images, None),
}


class PredictionFile:
    """An output file opened for appending: `done` are the images it already holds."""

    def __init__(self, path: Path, nodes: list[Node]) -> None:
        self.path, self.nodes = Path(path), nodes
        self._rows, read_images, header = _FORMATS[output_suffix(self.path)]
        data = self._read()
        whole = data[: data.rfind(b"\n") + 1]
        try:
            text = whole.decode("utf-8")
        except UnicodeDecodeError:
            raise UserError(f"{self.path}: not UTF-8 text; choose another --output") from None
        # Whose file this is is settled before anything is cut: a refusal changes no byte.
        self.done = set(read_images(self.path, text, nodes))
        partial = data[len(whole) :]
        if partial:
            self._cut_partial_row(whole, partial, header)
        self._handle = self._open()
        if header is not None and self._handle.tell() == 0:
            self._write(_csv_text([header(nodes)]))

    def _read(self) -> bytes:
        try:
            with open_regular(self.path) as handle:
                return handle.read()
        except FileNotFoundError:
            return b""
        except OSError as err:
            raise UserError(f"{self.path}: cannot read ({err.strerror})") from err

    def _cut_partial_row(self, whole: bytes, partial: bytes, header: Callable | None) -> None:
        """Cut a partial last row, as a killed run leaves one. With no whole row before it,
        nothing says the file is ours unless the part is the start of what this format
        writes first (the CSV header, a JSONL row): anything else is refused, untouched."""
        if not whole:
            first = (_csv_text([header(self.nodes)]) if header else _JSONL_ROW_START).encode()
            if not first.startswith(partial[: len(first)]):
                raise UserError(
                    f"{self.path}: not a prediction file of this run; choose another --output"
                )
        try:
            os.truncate(self.path, len(whole))
        except OSError as err:
            raise UserError(f"{self.path}: cannot write ({err.strerror})") from err

    def _open(self) -> IO[str]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return self.path.open("a", encoding="utf-8", newline="")
        except OSError as err:
            raise UserError(f"{self.path}: cannot write ({err.strerror})") from err

    def _write(self, text: str) -> None:
        try:
            self._handle.write(text)
            self._handle.flush()
            os.fsync(self._handle.fileno())
        except OSError as err:
            raise UserError(f"{self.path}: cannot write ({err.strerror})") from err

    def append(self, predictions: list[ImagePrediction]) -> None:
        """Add a batch as one write, on disk before the next batch starts."""
        if predictions:
            self._write(self._rows(predictions, self.nodes))
            self.done.update(p.image for p in predictions)

    def close(self) -> None:
        self._handle.close()
