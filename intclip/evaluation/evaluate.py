"""Evaluating a finished run, or plain CLIP, on val and test under the Intentonomy protocol.

Both go through the same scoring and the same report, and leave the same files (the JSON
report, a per-class chart, the label and score matrices `intclip-train score` reads, a row of
results.csv), so a trained run and its zero-shot baseline are compared on equal terms. Under
torchrun the images are sharded across processes; rank 0 writes the files and gets the report,
the other ranks None.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from intclip.data.dataset import load_split
from intclip.evaluation.per_class_chart import per_class_chart
from intclip.evaluation.results_table import append_result, read_results, results_path
from intclip.metrics.report import EvaluationReport, build_report
from intclip.metrics.score_inputs import save_score_split
from intclip.runtime import distributed
from intclip.training.checkpoint import load_model
from intclip.training.config import TrainConfig
from intclip.training.factory import Components, build_components
from intclip.training.inputs import Inputs, build_inputs
from intclip.training.run_bundle import load_run_inputs
from intclip.training.run_card import write_run_card
from intclip.training.run_dir import BEST_MODEL
from intclip.training.scoring import predict_scores
from pipeline.common.errors import UserError
from pipeline.common.files import atomic_write_text, stable_json
from pipeline.embeddings.zeroshot import ZeroShotCLIP

Scored = tuple[np.ndarray, np.ndarray]  # (0/1 labels, scores), images x classes


def evaluate_run(
    run_dir: Path,
    split: str,
    device: str,
    fixed_threshold: float | None = None,
    pretrained: Path | None = None,
) -> EvaluationReport | None:
    """The run's best checkpoint, its outputs written in the run (see the module docstring).
    `fixed_threshold` reports the split at that threshold as well as at val's."""
    run_dir = Path(run_dir)
    if not (run_dir / BEST_MODEL).is_file():
        raise UserError(f"{run_dir}: no {BEST_MODEL}; is it a run directory of intclip-train run?")
    run_inputs = load_run_inputs(run_dir, pretrained)
    config = run_inputs.config
    read_results(results_path(run_dir))  # a damaged table stops us before, not after, scoring
    context = distributed.setup(device)
    try:
        components = build_components(config, context.device)
        model = load_model(run_dir / BEST_MODEL, components.clip, components.class_text)
        inputs = build_inputs(config, components, context)
        scored = _score_splits(config, components, model, split, context, torch.sigmoid, inputs)
    finally:
        distributed.teardown()
    if not context.is_main:
        return None
    report = _report(split, scored, components, fixed_threshold)
    _write_outputs(run_dir, report, scored, run_inputs.recorded)
    write_run_card(run_dir)
    return report


def evaluate_zero_shot(
    config: TrainConfig, split: str, device: str, output_dir: Path
) -> EvaluationReport | None:
    """Plain CLIP with the config's class embeddings, nothing trained; its outputs go to
    `output_dir`, as a run's go to the run. A config with `model.input: features` scores
    CLIP's cached image embeddings, which are the same numbers."""
    read_results(results_path(output_dir))
    context = distributed.setup(device)
    try:
        components = build_components(config, context.device)
        inputs = build_inputs(config, components, context)
        embeddings = components.zero_shot_embeddings()
        model = ZeroShotCLIP(components.clip, embeddings, on_features=inputs.features)
        scored = _score_splits(
            config, components, model, split, context, ZeroShotCLIP.scores, inputs
        )
    finally:
        distributed.teardown()
    if not context.is_main:
        return None
    report = _report(split, scored, components)
    _write_outputs(Path(output_dir), report, scored, config)
    return report


def _write_outputs(
    directory: Path, report: EvaluationReport, scored: dict[str, Scored], config: TrainConfig
) -> None:
    """eval-<split>.json, its per-class chart (PNG and SVG), <split>_{labels,scores}.npy per
    split scored, and the row of results.csv beside `directory`."""
    split = report.split
    for name, (labels, scores) in scored.items():
        save_score_split(directory, name, labels, scores)
    atomic_write_text(directory / f"eval-{split}.json", stable_json(report.as_json()))
    per_class_chart(report, directory / f"eval-{split}-per-class.png")
    append_result(directory, report, config)


def _score_splits(
    config: TrainConfig,
    components: Components,
    model: nn.Module,
    split: str,
    context: distributed.Context,
    activation: Callable[[torch.Tensor], torch.Tensor],
    inputs: Inputs,
) -> dict[str, Scored]:
    """Val (which chooses the thresholds) and `split`, each scored once."""
    scored = {}
    for name in dict.fromkeys(("val", split)):
        index = load_split(config.data, name)
        if index is None:
            raise UserError(f"the config sets no data.{name} split")
        scores = predict_scores(
            model,
            inputs.dataset(index, name),
            config.optim.eval_batch_size,
            context,
            inputs.model_input,
            activation,
            inputs.options,
            description=f"eval {name}",
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
