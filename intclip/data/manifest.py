"""The manifest format: CSV with a header, or JSONL with one object per line; one row per image.

`intclip.data.dataset` reads its `image` and `labels`, `download` its `image` and `url`; both read
rows here so that a BOM, quoted newlines, blank JSONL lines and line numbers are handled once. No
torch, so `download` starts fast.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.common.errors import UserError
from pipeline.common.safe_load import load_json, read_text_file

IMAGE = "image"
"""The column / key holding the image's path under the image root."""


def _text(path: Path, what: str) -> str:
    return read_text_file(path, what).removeprefix("\ufeff")  # Excel writes a BOM


def csv_rows(path: Path, columns: Sequence[str], what: str) -> list[tuple[int, dict[str, str]]]:
    """(line, row) of every data row; the header must name `columns`."""
    reader = csv.DictReader(io.StringIO(_text(path, what), newline=""))
    try:
        if not reader.fieldnames or not set(columns) <= set(reader.fieldnames):
            raise UserError(f"{path}:1: the header must name the columns {' and '.join(columns)}")
        return [(reader.line_num, row) for row in reader]
    except csv.Error as err:
        raise UserError(f"{path}:{reader.line_num + 1}: invalid CSV: {err}") from None


def jsonl_rows(path: Path, what: str) -> list[tuple[int, Any]]:
    """(line, parsed value) of every non-blank line, each through the bounded JSON reader."""
    return [
        (line, load_json(text, f"{path}:{line}"))
        for line, text in enumerate(_text(path, what).splitlines(), start=1)
        if text.strip()
    ]
