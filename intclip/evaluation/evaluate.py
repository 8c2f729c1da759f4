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
from intclip.metrics.report import EvaluationReport, RerankedReport, build_report
from intclip.metrics.rerank import rerank_top_k
from intclip.metrics.score_inputs import save_score_split
from intclip.runtime import distributed
from intclip.training.checkpoint import load_model
from intclip.training.config import TrainConfig
from intclip.training.factory import Components, build_components, class_embeddings_file
from intclip.training.features import load_split_features
from intclip.training.inputs import Inputs, build_inputs
from intclip.training.run_bundle import load_run_inputs
from intclip.training.run_card import write_run_card
from intclip.training.run_dir import BEST_MODEL
from intclip.training.scoring import predict_scores
from pipeline.common.errors import UserError
from pipeline.common.files import atomic_write_text, stable_json
from pipeline.embeddings.cache import load_class_embeddings
from pipeline.embeddings.pooling import description_similarity
from pipeline.embeddings.zeroshot import ZeroShotCLIP

Scored = tuple[np.ndarray, np.ndarray]  # (0/1 labels, scores), images x classes


def evaluate_run(
    run_dir: Path,
    split: str,
    device: str,
    fixed_threshold: float | None = None,
    pretrained: Path | None = None,
    rerank_top_k: int | None = None,
) -> EvaluationReport | None:
    """The run's best checkpoint, its outputs written in the run (see the module docstring).
    `fixed_threshold` reports the split at that threshold as well as at val's; `rerank_top_k`
    (default: the run's `eval.rerank_top_k`) the re-ranked scores beside the plain ones."""
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
    report = _with_reranking(report, config, components, scored, rerank_top_k)
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
        pooling = config.model.class_text_pooling
        model = ZeroShotCLIP(components.clip, embeddings, inputs.features, pooling)
        scored = _score_splits(
            config, components, model, split, context, ZeroShotCLIP.scores, inputs
        )
    finally:
        distributed.teardown()
    if not context.is_main:
        return None
    report = _with_reranking(_report(split, scored, components), config, components, scored)
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


def _with_reranking(
    report: EvaluationReport,
    config: TrainConfig,
    components: Components,
    scored: dict[str, Scored],
    top_k: int | None = None,
) -> EvaluationReport:
    """`report` with the re-ranked report beside it when `top_k` (default the config's
    `eval.rerank_top_k`) asks for one: every split's scores re-ranked the same way, val's
    thresholds chosen again on re-ranked val."""
    top_k = top_k or config.eval.rerank_top_k
    if top_k is None:
        return report
    pooling = config.eval.rerank_pooling
    descriptions = _description_embeddings(config, components)
    reranked = {}
    for name, (labels, scores) in scored.items():
        images = load_split_features(config, name, components, device=_device_of(components))
        images = images.features.pooled
        by = description_similarity(images, descriptions, pooling).numpy()
        reranked[name] = (labels, rerank_top_k(scores, by, top_k))
    again = _report(report.split, reranked, components, report.fixed_threshold)
    return report.model_copy(
        update={"reranked": RerankedReport(top_k=top_k, pooling=pooling, report=again)}
    )


def _description_embeddings(config: TrainConfig, components: Components) -> torch.Tensor:
    """Each class's description embeddings [N, K, D] from the config's embedding cache."""
    if isinstance(components.class_text, torch.Tensor) and components.class_text.ndim == 3:
        return components.class_text
    path, key = class_embeddings_file(config)  # with prompts: their descriptions' cache
    cached = load_class_embeddings(path, key=key, clip=components.clip.identity)
    return cached.description_embeddings


def _device_of(components: Components) -> str:
    return str(next(components.clip.module.parameters()).device)
