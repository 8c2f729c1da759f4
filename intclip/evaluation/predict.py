"""Intents of new images with a trained run: probabilities, the run's val-tuned threshold, and
the same intents rolled up to every coarser level of the taxonomy.

Images are decoded by DataLoader workers and scored in batches; a file that cannot be read is
reported and left out, never stopping the batch it is in. Predictions come out batch by batch,
so a large folder can be written to a file as it goes (see `prediction_files`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from intclip.metrics.hierarchy import levels_above_fine, names_by_id
from intclip.runtime import distributed
from intclip.training.checkpoint import load_model
from intclip.training.factory import build_components
from intclip.training.progress import batch_bar
from intclip.training.run_bundle import load_run_inputs
from intclip.training.run_dir import BEST_MODEL, BEST_SUMMARY
from pipeline.clip.images import ImageTransform, open_image
from pipeline.common.errors import UserError
from pipeline.common.safe_load import load_json, read_text_file

FINE_LEVEL = "fine"
MAX_DEFAULT_WORKERS = 8


def default_workers() -> int:
    """The machine's cores, capped: decoding beyond a few workers only queues for the model."""
    return min(os.cpu_count() or 1, MAX_DEFAULT_WORKERS)


@dataclass(frozen=True)
class Intent:
    level: str
    id: str
    name: str
    probability: float
    predicted: bool


@dataclass(frozen=True)
class ImagePrediction:
    image: str
    intents: list[Intent]  # every level, each sorted by probability, fine first
    error: str | None = None
    """Why the image could not be read; it then has no intents."""


class _ImageFiles(Dataset):
    """(position, tensor or None, error or None) per path: a bad file is an item, not a crash."""

    def __init__(self, paths: Sequence[Path], transform: ImageTransform) -> None:
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, position: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            return position, self.transform(open_image(self.paths[position])), None
        except UserError as err:
            return position, None, str(err)


def _collate(items: list) -> list:
    return items


def _best_threshold(path: Path) -> float:
    """The val-tuned threshold `run` recorded with the best epoch."""
    summary = load_json(read_text_file(path, "best-epoch summary"), path)
    threshold = summary.get("val_threshold") if isinstance(summary, dict) else None
    if not isinstance(threshold, int | float) or not 0 <= threshold <= 1:
        raise UserError(f"{path}: damaged, no val_threshold in [0, 1]; train the run again")
    return float(threshold)


class Predictor:
    """A run's best model, ready to score images; built once, then fed batches."""

    def __init__(self, run_dir: Path, device: str, pretrained: Path | None = None) -> None:
        run_dir = Path(run_dir)
        if not (run_dir / BEST_MODEL).is_file():
            raise UserError(
                f"{run_dir}: no {BEST_MODEL}; is it a run directory of intclip-train run?"
            )
        config = load_run_inputs(run_dir, pretrained).config
        self.threshold = _best_threshold(run_dir / BEST_SUMMARY)
        self.device = distributed.resolve_device(device)
        components = build_components(config, self.device)
        self.model = load_model(
            run_dir / BEST_MODEL, components.clip, components.class_text, takes="images"
        )
        self.model.eval()
        self.transform = components.eval_transform()
        self.batch_size = config.optim.eval_batch_size
        taxonomy = components.taxonomy
        self.names = names_by_id(taxonomy) if taxonomy else {}
        self.levels = [(FINE_LEVEL, tuple(components.ids), None)]
        if taxonomy:
            self.levels += [(lv.name, lv.node_ids, lv) for lv in levels_above_fine(taxonomy)]

    @property
    def nodes(self) -> list[tuple[str, str]]:
        """(level, id) of every node, fine first, each level in taxonomy order."""
        return [(level, node) for level, ids, _ in self.levels for node in ids]

    def batches(
        self,
        images: Sequence[Path],
        top: int | None,
        workers: int,
        batch_size: int | None = None,
    ) -> Iterator[list[ImagePrediction]]:
        """The predictions of each batch in image order, unreadable images included with their
        error; `top` intents per level, or all of them when None."""
        size = batch_size or self.batch_size
        loader = DataLoader(
            _ImageFiles(images, self.transform),
            batch_size=size,
            num_workers=min(workers, math.ceil(len(images) / size)),  # none idle for a few images
            collate_fn=_collate,
        )
        for items in batch_bar(loader, len(loader), "predict", shown=True):
            readable = [(position, tensor) for position, tensor, _ in items if tensor is not None]
            scores = {}
            if readable:
                with torch.no_grad():
                    logits = self.model(torch.stack([t for _, t in readable]).to(self.device))
                probabilities = torch.sigmoid(logits.float()).cpu().numpy()
                scores = dict(zip((p for p, _ in readable), probabilities, strict=True))
            yield [
                ImagePrediction(str(images[position]), [], error)
                if error is not None
                else ImagePrediction(str(images[position]), self._intents(scores[position], top))
                for position, _, error in items
            ]

    def _intents(self, fine: np.ndarray, top: int | None) -> list[Intent]:
        intents = []
        for level, node_ids, rollup in self.levels:
            row = fine if rollup is None else rollup.roll_up(fine[None, :])[0]
            order = np.argsort(-row, kind="stable")[:top]
            intents += [
                Intent(
                    level,
                    node_ids[i],
                    self.names.get(node_ids[i], node_ids[i]),
                    round(float(row[i]), 4),
                    bool(row[i] > self.threshold),
                )
                for i in order
            ]
        return intents


def _plain(prediction: ImagePrediction) -> dict:
    """An image in stdout's JSON: unreadable images are reported on stderr, not here."""
    return {"image": prediction.image, "intents": [asdict(i) for i in prediction.intents]}


def as_json(predictions: list[ImagePrediction]) -> str:
    return json.dumps([_plain(p) for p in predictions], indent=2, ensure_ascii=False) + "\n"


def as_csv(predictions: list[ImagePrediction]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "level", "id", "name", "probability", "predicted"])
    for prediction in predictions:
        for intent in prediction.intents:
            writer.writerow([prediction.image, *asdict(intent).values()])
    return buffer.getvalue()


def as_table(predictions: list[ImagePrediction]) -> str:
    lines = []
    for prediction in predictions:
        lines.append(prediction.image)
        for intent in prediction.intents:
            mark = "*" if intent.predicted else " "
            lines.append(
                f"  {mark} {intent.probability:.3f}  {intent.level:<8} {intent.name} ({intent.id})"
            )
    lines.append("* = above the run's val-tuned threshold")
    return "\n".join(lines) + "\n"


FORMATTERS = {"table": as_table, "json": as_json, "csv": as_csv}
