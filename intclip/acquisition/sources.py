"""What `download` fetches: (id, URL, file name) of every image listed in annotation files.

Reads the official COCO-like Intentonomy JSON (`images[].id`, `.filename`, `.unsplash_url`) and
manifests (`data.format: manifest`) that carry a `url` column (CSV) or key (JSONL) beside `image`.
The reader is chosen by the file's suffix. Kept apart from `intclip.data.dataset` because that
module needs torch and downloading does not.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from intclip.data.manifest import IMAGE, csv_rows, jsonl_rows
from pipeline.common.errors import UserError
from pipeline.common.safe_load import load_json, read_text_file

MANIFEST_URL = "url"
ANNOTATION_FILE = "annotation file"  # what a read error calls the file
INTENTONOMY_IMAGE_KEYS = ("id", "filename", "unsplash_url")


@dataclass(frozen=True)
class ImageSource:
    """One image to fetch: `url` is saved as `<image root>/<filename>`."""

    id: str
    url: str
    filename: str
    where: str  # file: images[i], or file:line


def _intentonomy_sources(path: Path) -> list[ImageSource]:
    data = load_json(read_text_file(path, ANNOTATION_FILE).removeprefix("\ufeff"), path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise UserError(f"{path}: not an Intentonomy annotation file (needs an images list)")
    sources = []
    for position, image in enumerate(data["images"]):
        where = f"{path}: images[{position}]"
        values = _strings(image, INTENTONOMY_IMAGE_KEYS, where)
        sources.append(ImageSource(values[0], values[2], values[1], where))
    return sources


def _strings(entry: Any, keys: Sequence[str], where: str) -> list[str]:
    """The entry's values for `keys`, each a non-empty string (ids may be numbers)."""
    if isinstance(entry, dict):
        values = [entry.get(key) for key in keys]
        if all(isinstance(v, str | int) and not isinstance(v, bool) and v != "" for v in values):
            return [str(v) for v in values]
    raise UserError(f"{where}: needs {', '.join(keys)} (non-empty)")


def _csv_sources(path: Path) -> list[ImageSource]:
    rows = csv_rows(path, (IMAGE, MANIFEST_URL), ANNOTATION_FILE)
    return [_manifest_source(row, f"{path}:{line}") for line, row in rows]


def _jsonl_sources(path: Path) -> list[ImageSource]:
    rows = jsonl_rows(path, ANNOTATION_FILE)
    return [_manifest_source(entry, f"{path}:{line}") for line, entry in rows]


def _manifest_source(entry: Any, where: str) -> ImageSource:
    """A manifest names an image by its path, which is also its id."""
    image, url = _strings(entry, (IMAGE, MANIFEST_URL), where)
    return ImageSource(image, url, image, where)


READERS: dict[str, Callable[[Path], list[ImageSource]]] = {
    ".json": _intentonomy_sources,
    ".csv": _csv_sources,
    ".jsonl": _jsonl_sources,
}


def read_sources(paths: Iterable[Path]) -> list[ImageSource]:
    """Every image of every file, each file name once, in file order.

    The same file name listed twice with the same URL is fetched once; with different URLs it is
    a mistake in the annotations, reported with both places.
    """
    by_name: dict[str, ImageSource] = {}
    for path in map(Path, paths):
        reader = READERS.get(path.suffix.lower())
        if reader is None:
            raise UserError(f"{path}: an annotation file must end in {', '.join(READERS)}")
        for source in reader(path):
            first = by_name.setdefault(source.filename, source)
            if first.url != source.url:
                raise UserError(
                    f"{source.where}: {source.filename} has another URL at {first.where}"
                )
    return list(by_name.values())
