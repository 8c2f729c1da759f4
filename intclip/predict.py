"""Intents of new images with a trained run: probabilities, the run's val-tuned threshold, and
the same intents rolled up to every coarser level of the taxonomy."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from intclip import distributed
from intclip.checkpoint import load_model
from intclip.config import load_config
from intclip.factory import build_components
from intclip.hierarchy import levels_above_fine, names_by_id
from intclip.train import BEST_MODEL, BEST_SUMMARY, CONFIG_FILE
from pipeline.errors import UserError
from pipeline.images import open_image

FINE_LEVEL = "fine"


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


def predict_images(
    run_dir: Path,
    images: Sequence[Path],
    device: str,
    top: int,
    on_skip: Callable[[str], None] = lambda reason: None,
) -> list[ImagePrediction]:
    """The `top` most probable intents per level for each readable image; an unreadable one is
    told to `on_skip` and left out, so one bad file does not cost a whole batch."""
    run_dir = Path(run_dir)
    if not (run_dir / BEST_MODEL).is_file():
        raise UserError(f"{run_dir}: no {BEST_MODEL}; is it a run directory of intclip-train run?")
    config = load_config(run_dir / CONFIG_FILE)
    threshold = float(json.loads((run_dir / BEST_SUMMARY).read_text())["val_threshold"])
    target = distributed.resolve_device(device)
    components = build_components(config, target)
    model = load_model(run_dir / BEST_MODEL, components.clip, components.class_text).eval()
    transform = components.eval_transform()
    step = config.optim.eval_batch_size
    chunks, readable, problems = [], [], []
    for start in range(0, len(images), step):
        tensors = []
        for path in images[start : start + step]:
            try:
                tensors.append(transform(open_image(path)))
            except UserError as err:
                problems.append(str(err))
                on_skip(str(err))
                continue
            readable.append(path)
        if tensors:
            with torch.no_grad():
                logits = model(torch.stack(tensors).to(target))
            chunks.append(torch.sigmoid(logits.float()).cpu().numpy())
    if not readable:
        raise UserError(f"none of the {len(images)} image(s) could be read; {problems[0]}")
    scores = np.concatenate(chunks)

    taxonomy = components.taxonomy
    names = names_by_id(taxonomy) if taxonomy else {}
    ids = components.ids
    levels = [(FINE_LEVEL, tuple(ids), scores)]
    if taxonomy:
        levels += [(lv.name, lv.node_ids, lv.roll_up(scores)) for lv in levels_above_fine(taxonomy)]
    predictions = []
    for row, path in enumerate(readable):
        intents = []
        for level, node_ids, matrix in levels:
            order = np.argsort(-matrix[row], kind="stable")[:top]
            intents += [
                Intent(
                    level,
                    node_ids[i],
                    names.get(node_ids[i], node_ids[i]),
                    round(float(matrix[row, i]), 4),
                    bool(matrix[row, i] > threshold),
                )
                for i in order
            ]
        predictions.append(ImagePrediction(str(path), intents))
    return predictions


def as_json(predictions: list[ImagePrediction]) -> str:
    return json.dumps([asdict(p) for p in predictions], indent=2, ensure_ascii=False) + "\n"


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
