"""The training loop, top to bottom: data, model, optimiser, epochs, validation, checkpoints.

Honest by construction: the test split is never loaded here, the best checkpoint is chosen on
val alone, and every epoch's randomness derives from (seed, epoch), so a resumed run continues
exactly where it stopped.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from pathlib import Path

import numpy as np
from torch.nn.parallel import DistributedDataParallel

from intclip.data.loader import scoring_loader, train_loader
from intclip.model.models import build_model
from intclip.runtime import distributed, precision
from intclip.runtime.acceleration import compiled, to_channels_last
from intclip.training.accumulation import AccumulationPlan
from intclip.training.checkpoint import save_model
from intclip.training.config import OptimConfig, TrainConfig, with_absolute_paths
from intclip.training.curves import plot_learning_curves
from intclip.training.epoch_metrics import final_report, validation_row, write_metrics
from intclip.training.factory import build_components, check_official_sentences
from intclip.training.init_from import initialise
from intclip.training.inputs import build_inputs
from intclip.training.interrupts import stops_resumably
from intclip.training.loss import AsymmetricLoss
from intclip.training.optimizer import Optimisation, build_optimizer, build_scheduler
from intclip.training.provenance import invocation
from intclip.training.run_bundle import read_manifest, recorded, update_manifest
from intclip.training.run_card import write_run_card
from intclip.training.run_dir import (
    BEST_MODEL,
    BEST_SUMMARY,
    LAST_STATE,
    METRICS_FILE,
    StateNote,
    bundle_run_inputs,
    create_run_directory,
    run_directory,
)
from intclip.training.run_log import RunLog, captured_output
from intclip.training.scoring import predict_scores
from intclip.training.splits import checked_split
from intclip.training.state import TrainingProgress, restore_state, save_state, seed_everything
from intclip.training.step import NonFiniteLoss, TrainingPass, unreadable_stops_the_run
from intclip.training.trackers import Trackers, open_trackers, require_trackers
from pipeline.common.console import stderr
from pipeline.common.errors import UserError
from pipeline.common.files import atomic_write_text, stable_json


def train(
    config: TrainConfig,
    config_name: str,
    resume: Path | None = None,
    skip_bad: bool = False,
    stop_after: int | None = None,
    log: RunLog | None = None,
) -> Path:
    """Train as configured; return the run directory.

    `stop_after` ends the run once that many epochs are complete, with the schedule of the
    full run, so that `--resume` continues it exactly. What the run prints goes to its
    `train.log` as well: into `log` when given (the CLI's, which also holds what it prints
    after), otherwise into a capture of this call alone.
    """
    with nullcontext(log) if log is not None else captured_output() as run_log:
        context = distributed.setup(config.device)
        try:
            return _train(config, config_name, context, resume, skip_bad, stop_after, run_log)
        finally:
            distributed.teardown()


def _train(
    config: TrainConfig,
    config_name: str,
    context: distributed.Context,
    resume: Path | None,
    skip_bad: bool,
    stop_after: int | None,
    run_log: RunLog,
) -> Path:
    started = invocation(context.device)
    require_trackers(config)
    if resume is None:
        config = with_absolute_paths(config)
    run_dir = run_directory(config, config_name, context, resume)
    log = stderr.print if context.is_main else _silent
    if resume is not None and context.is_main:
        run_log.attach(run_dir)
    stopped_note = StateNote(run_dir)

    check_official_sentences(config)  # before the data checks, which may take minutes
    # Data: train and val only. The test split is never looked at while training.
    train_index = checked_split(config, "train", skip_bad, log)
    val_index = checked_split(config, "val", skip_bad, log)

    components = build_components(config, context.device)
    seed_everything(config.seed)  # the new modules' initial weights depend on the seed alone
    model = build_model(components.clip, components.class_text, config.model)
    if config.init_from is not None and resume is None:
        config = config.model_copy(
            update={"init_from": initialise(model, config.init_from, BEST_MODEL)}
        )
        log(f"initialised from {config.init_from.path}")
    channels_last = to_channels_last(
        model, components.clip.module.visual, config.optim.channels_last
    )
    ddp = (
        DistributedDataParallel(model, broadcast_buffers=model.trains_buffers)
        if context.distributed
        else None
    )
    trainable = compiled(ddp or model, config.optim.compile)
    groups = model.parameter_groups()
    log(", ".join(f"{g.role}: {g.count:,} trained parameters" for g in groups))

    # Images: workers decode and crop, the device converts and normalises (image_pipeline).
    # Features: the frozen tower's, from the cache, computed there first when missing.
    inputs = build_inputs(config, components, context, channels_last)
    model_input, options = inputs.model_input, inputs.options
    train_set = inputs.dataset(train_index, "train", train=True)
    val_set = inputs.dataset(val_index, "val")
    batch_size = config.optim.batch_size // context.world_size
    if batch_size < 1:
        raise UserError(
            f"optim.batch_size {config.optim.batch_size} is smaller than the world size"
        )
    loader, seeds = train_loader(
        train_set, batch_size, config.seed, context, options, skip_unreadable=skip_bad
    )
    val_loader = scoring_loader(
        val_set, config.optim.eval_batch_size, context, options, persistent=True
    )
    plan = AccumulationPlan(
        len(seeds), batch_size, config.optim.grad_accumulation, config.loss.reduction
    )

    scaler = precision.grad_scaler(config.precision, context.device)
    optimizer = build_optimizer(config.optim, groups, context.device, scaler is not None)
    optimisation = Optimisation(
        optimizer,
        build_scheduler(config.optim, optimizer, plan.steps),
        scaler,
        [p for g in groups for p in g.parameters],
        config.optim.grad_clip,
    )
    progress = TrainingProgress()
    if resume is None and context.is_main:
        create_run_directory(config, run_dir)
        bundle_run_inputs(config, run_dir, components, started)
        run_log.attach(run_dir)
        save_state(run_dir / LAST_STATE, config, model, optimisation, progress)  # resumable now
        write_metrics(run_dir / METRICS_FILE, progress.rows)
    if resume is not None:
        progress = restore_state(run_dir / LAST_STATE, config, model, optimisation)
        if context.is_main:
            write_metrics(run_dir / METRICS_FILE, progress.rows)
        log(f"resuming {run_dir} after epoch {progress.epoch} (step {progress.step})")
    stopped_note.saved(progress.epoch)
    trackers = _trackers(config, run_dir, context, resumed=resume is not None)
    passes = TrainingPass(
        config, context, loader, seeds, plan, model, trainable, ddp, model_input,
        precision.autocast(config.precision, context.device),
        AsymmetricLoss(**config.loss.model_dump()), optimisation, trackers, run_log, stopped_note,
    )  # fmt: skip

    last_epoch = min(config.optim.epochs, stop_after or config.optim.epochs)
    stopped_early = _patience_spent(progress, config.optim)
    with (
        stops_resumably(
            run_dir, progress, config.optim.epochs, plan.steps, stopped_note, context.is_main
        ),
        recorded(run_dir, started) if context.is_main else nullcontext(),
        trackers,
    ):
        if progress.epoch < last_epoch and not stopped_early:
            log(f"training epochs {progress.epoch + 1} to {last_epoch} of {config.optim.epochs}")
        for epoch in range(progress.epoch, progress.epoch if stopped_early else last_epoch):
            trained = passes.run(epoch, progress)
            with unreadable_stops_the_run(stopped_note):
                scores = predict_scores(
                    model, val_set, config.optim.eval_batch_size, context, model_input,
                    precision=config.precision, loader=val_loader, description="validation",
                )  # fmt: skip
            if not (np.isfinite(scores).all() and math.isfinite(trained.loss)):
                what = "val scores" if math.isfinite(trained.loss) else "train loss"
                raise NonFiniteLoss(
                    f"non-finite {what} after epoch {epoch + 1}; stopped, {stopped_note()}"
                )
            progress.epoch = epoch + 1
            if context.is_main:
                row = validation_row(val_index, scores, progress, trained)
                improved = row["val_mAP"] > progress.best_val_map
                progress.epochs_since_best = 0 if improved else progress.epochs_since_best + 1
                row["epochs_since_best"] = progress.epochs_since_best
                progress.rows.append(row)
                trackers.epoch(row)
                if improved:
                    progress.best_val_map = row["val_mAP"]
                    save_model(model, run_dir / BEST_MODEL, config)
                    atomic_write_text(run_dir / BEST_SUMMARY, stable_json(row))
                save_state(run_dir / LAST_STATE, config, model, optimisation, progress)
                stopped_note.saved(progress.epoch)
                write_metrics(run_dir / METRICS_FILE, progress.rows)
                log(
                    f"epoch {progress.epoch}/{config.optim.epochs}: loss {trained.loss:.4f}, "
                    f"val mAP {row['val_mAP']:.2f}, val macro F1 {row['val_macro_f1']:.2f}"
                )
            stopped_early = distributed.broadcast_object(
                _patience_spent(progress, config.optim), context
            )
            distributed.barrier(context)
            if stopped_early:
                break
        ending = _summary(progress, config.optim, stopped_early)
        trackers.report(progress.step, final_report(progress.rows, ending))
    if context.is_main:
        plot_learning_curves([run_dir], run_dir)
        write_run_card(run_dir)
    log(ending)
    return run_dir


def _trackers(
    config: TrainConfig, run_dir: Path, context: distributed.Context, resumed: bool
) -> Trackers:
    """The trackers `log.trackers` names, on rank 0 only, continuing a resumed run's tracker
    runs; their ids go to run.json."""
    if not context.is_main:
        return Trackers({})
    manifest = read_manifest(run_dir)
    ids = manifest.trackers if manifest is not None else {}
    trackers = open_trackers(config, run_dir, ids, resumed)
    update_manifest(run_dir, trackers={**ids, **trackers.ids()})
    return trackers


def _patience_spent(progress: TrainingProgress, optim: OptimConfig) -> bool:
    patience = optim.early_stop_patience
    return patience is not None and progress.epochs_since_best >= patience


def _summary(progress: TrainingProgress, optim: OptimConfig, stopped_early: bool) -> str:
    """The run's last line: how it ended and its best epoch."""
    if stopped_early:
        ending = (
            f"stopped early after epoch {progress.epoch}: val mAP has not improved for "
            f"{optim.early_stop_patience} validations (optim.early_stop_patience)"
        )
    elif progress.epoch < optim.epochs:
        ending = f"stopped after epoch {progress.epoch} of {optim.epochs}; --resume continues"
    else:
        ending = f"finished {progress.epoch} epochs"
    if not progress.rows:
        return ending
    best = max(progress.rows, key=lambda row: row["val_mAP"])
    return f"{ending}; best val mAP {best['val_mAP']:.2f} at epoch {int(best['epoch'])}"


def _silent(*_: object, **__: object) -> None:
    """Ranks other than 0 print nothing."""
