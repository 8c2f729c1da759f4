"""Evaluating a finished run, or plain CLIP, on val and test under the Intentonomy protocol.

Both go through the same scoring and the same report, so a trained run and its zero-shot
baseline are compared on equal terms. Under torchrun the images are sharded across processes;
rank 0 writes the files and gets the report, the other ranks None.
"""

from __future__ import annotations

from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import numpy as np
import torch
from torch import nn

from intclip import distributed
from intclip.checkpoint import load_model
from intclip.config import TrainConfig, load_config
from intclip.data import ImageDataset, load_split
from intclip.evaluation import predict_scores
from intclip.factory import Components, build_components
from intclip.loader import LoaderOptions
from intclip.report import EvaluationReport, build_report, per_class_chart
from intclip.train import BEST_MODEL, CONFIG_FILE
from pipeline.errors import UserError
from pipeline.files import atomic_write_bytes, atomic_write_text, stable_json
from pipeline.zeroshot import ZeroShotCLIP

Scored = tuple[np.ndarray, np.ndarray]  # (0/1 labels, scores), images x classes


def evaluate_run(
    run_dir: Path, split: str, device: str, fixed_threshold: float | None = None
) -> EvaluationReport | None:
    """The run's best checkpoint; writes eval-<split>.json, the chart and the score matrices.
    `fixed_threshold` reports the split at that threshold as well as at val's."""
    run_dir = Path(run_dir)
    if not (run_dir / BEST_MODEL).is_file():
        raise UserError(f"{run_dir}: no {BEST_MODEL}; is it a run directory of intclip-train run?")
    config = load_config(run_dir / CONFIG_FILE)
    context = distributed.setup(device)
    try:
        components = build_components(config, context.device)
        model = load_model(run_dir / BEST_MODEL, components.clip, components.class_text)
        scored = _score_splits(config, components, model, split, context, torch.sigmoid)
    finally:
        distributed.teardown()
    if not context.is_main:
        return None
    for name, (_, scores) in scored.items():
        _save_npy(run_dir / f"{name}_scores.npy", scores)
    report = _report(split, scored, components, fixed_threshold)
    atomic_write_text(run_dir / f"eval-{split}.json", stable_json(report.model_dump(mode="json")))
    per_class_chart(report, run_dir / f"eval-{split}-per-class-f1.png")
    return report


def evaluate_zero_shot(config: TrainConfig, split: str, device: str) -> EvaluationReport | None:
    """Plain CLIP with the config's class embeddings, nothing trained."""
    context = distributed.setup(device)
    try:
        components = build_components(config, context.device)
        model = ZeroShotCLIP(components.clip, components.zero_shot_embeddings())
        scored = _score_splits(config, components, model, split, context, ZeroShotCLIP.scores)
    finally:
        distributed.teardown()
    return _report(split, scored, components) if context.is_main else None


def _score_splits(
    config: TrainConfig,
    components: Components,
    model: nn.Module,
    split: str,
    context: distributed.Context,
    activation: Callable[[torch.Tensor], torch.Tensor],
) -> dict[str, Scored]:
    """Val (which chooses the threshold) and `split`, each scored once."""
    scored = {}
    pipeline = components.image_pipeline(config)
    model_input = components.model_input(pipeline, context.device)
    options = LoaderOptions.from_config(config.data, context.device)
    for name in dict.fromkeys(("val", split)):
        index = load_split(config.data, name)
        if index is None:
            raise UserError(f"the config sets no data.{name} split")
        scores = predict_scores(
            model,
            ImageDataset(index, pipeline.eval),
            config.optim.eval_batch_size,
            context,
            model_input,
            activation,
            options,
        )
        scored[name] = ((index.targets > 0).astype(np.int64), scores)
    return scored


def _report(
    split: str,
    scored: dict[str, Scored],
    components: Components,
    fixed_threshold: float | None = None,
) -> EvaluationReport:
    return build_report(
        split, scored["val"], scored[split], components.ids, components.taxonomy, fixed_threshold
    )


def _save_npy(path: Path, array: np.ndarray) -> None:
    buffer = BytesIO()
    np.save(buffer, array, allow_pickle=False)
    atomic_write_bytes(path, buffer.getvalue())
