"""Multi-label image data: annotation files read once into an index of paths and targets.

The official code re-read the annotation JSON for every image; here each split is parsed once
into `LabelIndex` (relative image paths plus an [images, classes] target matrix), and the
`Dataset` only opens images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from intclip.data.manifest import IMAGE, csv_rows, jsonl_rows
from pipeline.common.errors import UserError
from pipeline.common.image_errors import DECODE_ERRORS, opened_image
from pipeline.common.safe_load import load_json, read_text_file

if TYPE_CHECKING:
    from intclip.data.config import DataConfig

LabelMode = Literal["binary", "soft"]
Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class EntryProblem:
    """Something wrong with one entry of a split; `check-data` reports these, `--skip-bad`
    leaves their entries out."""

    row: int
    where: str  # file:line or file: annotations[i]
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"{self.where}: {self.kind}: {self.detail}"


@dataclass(frozen=True)
class LabelIndex:
    """One split: image paths relative to `image_root`, and one target row per image."""

    source: Path
    image_root: Path
    paths: tuple[str, ...]
    targets: np.ndarray  # [images, classes] float32; 0/1, or annotator agreement when soft
    locations: tuple[str, ...]  # where each entry is written: file:line or file: annotations[i]
    problems: tuple[EntryProblem, ...] = ()
    label_width: int = 0
    """The classes the annotations themselves have: their categories, or the highest label + 1
    (a manifest names no class count), which `check-data` compares with `data.num_classes`."""

    @property
    def num_classes(self) -> int:
        return int(self.targets.shape[1])

    def __len__(self) -> int:
        return len(self.paths)

    def where(self, row: int) -> str:
        return self.locations[row]

    def without(self, rows: Sequence[int]) -> LabelIndex:
        """The split less the given entries (the bad ones `check-data` found), with no problems."""
        keep = sorted(set(range(len(self))) - set(rows))
        return LabelIndex(
            self.source,
            self.image_root,
            tuple(self.paths[i] for i in keep),
            self.targets[keep],
            tuple(self.locations[i] for i in keep),
            label_width=self.label_width,
        )


def width_mismatch(source: Path, width: int, what: str, num_classes: int) -> UserError:
    """The annotations and `data.num_classes` disagree: one line naming both and the key."""
    return UserError(
        f"{source}: the annotations have {width} classes ({what}) but data.num_classes is "
        f"{num_classes}; set data.num_classes, or data.taxonomy (whose class count is its "
        "default) to the dataset's taxonomy"
    )


def _read_json(path: Path) -> Any:
    return load_json(read_text_file(path, "annotation file"), path)


def load_intentonomy(
    annotation_file: Path,
    image_root: Path,
    num_classes: int = 28,
    label_mode: LabelMode = "binary",
) -> LabelIndex:
    """An official Intentonomy annotation JSON, in `annotations` order.

    Train annotations carry `category_ids_softprob` (the share of 3 annotators who chose each
    class); val and test carry `category_ids`. `binary` keeps a class when any annotator chose
    it (softprob > 0), as the paper does.
    """
    data = _read_json(annotation_file)
    if not isinstance(data, dict) or not {"images", "annotations"} <= data.keys():
        raise UserError(f"{annotation_file}: not an Intentonomy file (needs images, annotations)")
    for key in ("images", "annotations"):
        if not isinstance(data[key], list):
            kind = type(data[key]).__name__
            raise UserError(f"{annotation_file}: {key} must be a list, not {kind}")
    filenames: dict[str, str] = {}
    positions: dict[str, int] = {}
    for position, image in enumerate(data["images"]):
        image_id = image.get("id") if isinstance(image, dict) else None
        filename = image.get("filename") if isinstance(image, dict) else None
        if type(image_id) not in (int, str) or not isinstance(filename, str) or not filename:
            raise UserError(
                f"{annotation_file}: images[{position}] needs an id and a filename (a string)"
            )
        first = positions.setdefault(str(image_id), position)
        if first != position:
            raise UserError(
                f"{annotation_file}: images[{position}]: id {image_id!r} is listed again (first "
                f"at images[{first}]); which annotation is whose cannot be told"
            )
        filenames[str(image_id)] = filename
    width = _declared_width(data)
    if width is not None and width[0] != num_classes:
        raise width_mismatch(Path(annotation_file), *width, num_classes)
    entries = []
    annotated: set[str] = set()
    for position, annotation in enumerate(data["annotations"]):
        where = f"{annotation_file}: annotations[{position}]"
        image_id = str(annotation.get("image_id")) if isinstance(annotation, dict) else None
        if image_id not in filenames:
            raise UserError(f"{where}: image_id {image_id!r} is not in images")
        annotated.add(image_id)
        entries.append(
            (where, filenames[image_id], _target_row(annotation, num_classes, label_mode, where))
        )
    for image_id, position in positions.items():
        if image_id not in annotated:
            raise UserError(
                f"{annotation_file}: images[{position}]: image {image_id!r} "
                f"({filenames[image_id]}) has no annotation"
            )
    index = _index(Path(annotation_file), Path(image_root), entries, num_classes)
    return index if width is None else replace(index, label_width=width[0])


Labels = np.ndarray | list[Any]


def _declared_width(data: dict[str, Any]) -> tuple[int, str] | None:
    """The class count an Intentonomy file states: its categories, or the length of its
    first soft label row; None when it states none (val and test without categories)."""
    categories = data.get("categories")
    if isinstance(categories, list) and categories:
        return len(categories), f"{len(categories)} categories"
    for annotation in data["annotations"]:
        soft = annotation.get("category_ids_softprob") if isinstance(annotation, dict) else None
        if isinstance(soft, list):
            return len(soft), "the length of category_ids_softprob"
    return None


def _target_row(
    annotation: dict[str, Any], num_classes: int, label_mode: LabelMode, where: str
) -> Labels:
    """A soft row as given (binarised unless `soft`), or the label ids to be checked."""
    if "category_ids_softprob" in annotation:
        given = annotation["category_ids_softprob"]
        numbers = isinstance(given, list) and all(
            isinstance(p, int | float) and not isinstance(p, bool) for p in given
        )  # numpy would take the string "1" for the number 1
        soft = np.asarray(given if numbers else [np.nan], dtype=np.float64)
        if soft.shape != (num_classes,) or not np.all((soft >= 0) & (soft <= 1)):
            raise UserError(
                f"{where}: category_ids_softprob must be {num_classes} numbers in [0, 1]"
            )
        soft = soft.astype(np.float32)
        return soft if label_mode == "soft" else (soft > 0).astype(np.float32)
    if "category_ids" in annotation:
        return annotation["category_ids"]
    raise UserError(f"{where}: needs category_ids or category_ids_softprob")


def _index(
    source: Path, image_root: Path, entries: list[tuple[str, str, Labels]], num_classes: int
) -> LabelIndex:
    """Targets and per-entry problems: labels out of range, no label, an image listed twice."""
    targets = np.zeros((len(entries), num_classes), dtype=np.float32)
    problems: list[EntryProblem] = []
    first_row: dict[str, int] = {}
    width = 0
    for row, (where, path, labels) in enumerate(entries):
        if isinstance(labels, np.ndarray):
            targets[row] = labels
            labelled = bool(labels.any())
            width = max(width, len(labels))
        else:
            if not isinstance(labels, list) or not all(type(i) is int for i in labels):
                raise UserError(f"{where}: labels must be a list of integer class ids")
            for label in labels:
                if 0 <= label < num_classes:
                    targets[row, label] = 1.0
                else:
                    detail = f"label {label} is not in 0..{num_classes - 1}"
                    problems.append(EntryProblem(row, where, "label out of range", detail))
            labelled = any(0 <= label < num_classes for label in labels)
            width = max([width, *(label + 1 for label in labels)])
        if not labelled:
            problems.append(EntryProblem(row, where, "no label", path))
        if path in first_row:
            detail = f"{path} is listed again (first at entry {first_row[path]})"
            problems.append(EntryProblem(row, where, "duplicate", detail))
        first_row.setdefault(path, row)
    paths = tuple(path for _, path, _ in entries)
    locations = tuple(where for where, _, _ in entries)
    return LabelIndex(
        source, image_root, paths, targets, locations, tuple(problems), label_width=width
    )


def load_manifest(manifest: Path, image_root: Path, num_classes: int) -> LabelIndex:
    """A generic multi-label list: CSV with columns `image,labels` (ids joined by `;`), or JSONL
    lines `{"image": ..., "labels": [...]}`. For other multi-label sets such as emotions."""
    manifest = Path(manifest)
    reader = _MANIFEST_READERS.get(manifest.suffix.lower())
    if reader is None:
        raise UserError(f"{manifest}: a manifest must end in .csv or .jsonl")
    entries = reader(manifest)
    located = [(f"{manifest}:{line}", image, labels) for line, image, labels in entries]
    return _index(manifest, Path(image_root), located, num_classes)


def _csv_entries(path: Path) -> list[tuple[int, str, list[int]]]:
    entries = []
    for line, row in csv_rows(path, (IMAGE, "labels"), "manifest"):
        try:
            labels = [int(part) for part in (row["labels"] or "").split(";") if part.strip()]
        except ValueError:
            raise UserError(f"{path}:{line}: labels must be integer ids joined by ';'") from None
        entries.append((line, (row[IMAGE] or "").strip(), labels))
    return entries


def _jsonl_entries(path: Path) -> list[tuple[int, str, list[int]]]:
    entries = []
    for line, entry in jsonl_rows(path, "manifest"):
        if not isinstance(entry, dict) or not {IMAGE, "labels"} <= entry.keys():
            raise UserError(f'{path}:{line}: expected {{"image": ..., "labels": [...]}}')
        entries.append((line, str(entry[IMAGE]), entry["labels"]))
    return entries


_MANIFEST_READERS: dict[str, Callable[[Path], list[tuple[int, str, list[int]]]]] = {
    ".csv": _csv_entries,
    ".jsonl": _jsonl_entries,
}


def load_split(data: DataConfig, split: Split) -> LabelIndex | None:
    """The split named in the data config (None for an absent test split); read once."""
    path = getattr(data, split)
    if path is None:
        return None
    if data.format == "intentonomy":
        index = load_intentonomy(path, data.image_root, data.num_classes, data.label_mode)
    elif data.label_mode == "soft":
        raise UserError(f"{path}: manifests carry label ids only; use label_mode: binary")
    else:
        index = load_manifest(path, data.image_root, data.num_classes)
    if not len(index):
        raise UserError(f"{path}: the {split} split (data.{split}) lists no images")
    return index


class UnreadableImage(UserError):
    """An image that decoded when the run started but not now: changed, cut off or removed on
    disk since. Exit 2 like any bad input; `--skip-bad` skips it in training instead."""

    def __init__(self, message: str) -> None:
        # A DataLoader worker sends its exception back as the traceback's text and re-raises
        # `UnreadableImage(text)`; the message is the text's last line, after the class name.
        lines = message.strip().splitlines() or [message]
        super().__init__(lines[-1].split(f"{UnreadableImage.__name__}: ", 1)[-1])


class ImageDataset(Dataset):
    """Images of a `LabelIndex` through a transform; yields (image tensor, target, row).

    The transform gets the opened file before decoding, so that it can decode at a reduced
    JPEG scale (see `intclip.data.image_pipeline`)."""

    def __init__(self, index: LabelIndex, transform: Callable[[Image.Image], torch.Tensor]):
        self.index = index
        self.transform = transform

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, row: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        path = self.index.image_root / self.index.paths[row]
        try:
            with opened_image(path) as image:
                tensor = self.transform(image)
        except DECODE_ERRORS as err:
            detail = " ".join(str(err).split())
            raise UnreadableImage(
                f"{self.index.where(row)}: {path} cannot be read any more ({detail}); it "
                "decoded when the run started, so it changed on disk since"
            ) from None
        return tensor, torch.from_numpy(self.index.targets[row]), row
