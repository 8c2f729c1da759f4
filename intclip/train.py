"""The training loop, top to bottom: data, model, optimiser, epochs, validation, checkpoints.

Honest by construction: the test split is never loaded here, the best checkpoint is chosen on
val alone, and every epoch's randomness derives from (seed, epoch), so a resumed run continues
exactly where it stopped.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from intclip import distributed, precision
from intclip.acceleration import compiled, fused_optimizer, to_channels_last
from intclip.accumulation import AccumulationPlan
from intclip.checkpoint import save_model
from intclip.config import OptimConfig, TrainConfig, config_leaves, save_config
from intclip.data import ImageDataset, LabelIndex, UnreadableImage, load_split
from intclip.data_check import DecodedImages, check_index, summarize
from intclip.evaluation import predict_scores
from intclip.factory import Components, build_components, class_embeddings_file
from intclip.init_from import initialise
from intclip.loader import EpochSeeds, LoaderOptions, TrainBatch, scoring_loader, train_loader
from intclip.loss import AsymmetricLoss
from intclip.metrics import evaluate_split, select_threshold
from intclip.model import IntCLIP, ParameterGroup
from intclip.progress import EpochProgress
from intclip.run_bundle import RUN_CONFIG, bundle_inputs, with_absolute_paths
from intclip.run_log import RunLog, captured_output
from intclip.tensorboard_log import TensorBoardLog
from pipeline.console import stderr
from pipeline.errors import EXIT_FAILED, UserError
from pipeline.files import atomic_write_bytes, atomic_write_text, cache_root, stable_json

CONFIG_FILE = RUN_CONFIG
METRICS_FILE = "metrics.csv"
LAST_STATE = "last.pt"
BEST_MODEL = "best.safetensors"
BEST_SUMMARY = "best.json"
DECODED_IMAGES = "decoded-images.json"  # under the cache root: images known to decode
METRIC_COLUMNS = (
    "epoch",
    "step",
    "train_loss",
    "val_mAP",
    "val_macro_f1",
    "val_micro_f1",
    "val_samples_f1",
    "val_threshold",
    "lr",
    "images_per_s",
    "epochs_since_best",
)


class NonFiniteLoss(UserError):
    """Training diverged; the last good checkpoint is kept untouched."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_FAILED)


@dataclass
class TrainingProgress:
    """Where a run stands: what `last.pt` restores besides the model and the optimiser."""

    epoch: int = 0  # epochs completed
    step: int = 0
    best_val_map: float = -1.0
    epochs_since_best: int = 0  # validations without a better val mAP, for early stopping
    rows: list[dict[str, float]] = field(default_factory=list)  # metrics.csv, one per epoch


@dataclass
class _Optimisation:
    """One optimiser step over accumulated micro-batches, with fp16's loss scaling if any."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler | None
    parameters: list[torch.Tensor]
    grad_clip: float | None

    def backward(self, loss: torch.Tensor) -> None:
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def step(self) -> None:
        if self.scaler is not None and self.grad_clip:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.parameters, self.grad_clip)
        if self.scaler is None:
            self.optimizer.step()
        else:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def learning_rates(self) -> dict[str, float]:
        return {group["name"]: group["lr"] for group in self.optimizer.param_groups}


@dataclass
class _TrainingPass:
    """One epoch over the training set: micro-batches, optimiser steps, progress, checks."""

    config: TrainConfig
    context: distributed.Context
    loader: DataLoader
    seeds: EpochSeeds
    plan: AccumulationPlan
    model: IntCLIP
    trainable: nn.Module
    ddp: DistributedDataParallel | None
    model_input: Callable[[torch.Tensor], torch.Tensor]
    autocast: AbstractContextManager
    criterion: AsymmetricLoss
    optimisation: _Optimisation
    board: TensorBoardLog | None
    run_log: RunLog
    state_note: Callable[[], str]

    def run(self, epoch: int, progress: TrainingProgress) -> tuple[float, float]:
        """Train epoch `epoch`, counting steps in `progress`; (mean train loss, images/s)."""
        context, plan, board, optimisation = self.context, self.plan, self.board, self.optimisation
        _seed_epoch(self.config.seed, epoch, context.rank)
        self.seeds.set_epoch(epoch)
        self.model.train()
        started, seen, batches, done, unreadable = time.perf_counter(), 0, 0, 0, []
        loss_sum = torch.zeros((), device=context.device)  # on the device: no sync per step
        step_loss = torch.zeros((), device=context.device)
        shown = EpochProgress(
            epoch, self.config.optim.epochs, plan.steps, self.run_log, context.is_main
        )
        with shown:
            for micro, batch in enumerate(_batches(self.loader, self.state_note)):
                unreadable += batch.skipped
                if batch.images is None:  # a skipped micro-batch would upset the step plan
                    raise UnreadableImage(
                        f"a whole batch no longer decodes, the first: {batch.skipped[0]}; "
                        f"stopped, {self.state_note()}"
                    )
                images = self.model_input(batch.images)
                targets = batch.targets.to(context.device, non_blocking=True)
                ends_step = plan.ends_step(micro)
                # DDP averages gradients across processes on the step's last micro-batch only
                with nullcontext() if ends_step or self.ddp is None else self.ddp.no_sync():
                    with self.autocast:
                        logits = self.trainable(images)
                    loss = self.criterion(logits.float(), targets)
                    weighted = loss * plan.weight(micro, len(images))
                    optimisation.backward(weighted)
                seen += len(images) * context.world_size
                loss_sum += loss.detach()  # a nan or inf stays in the sum until it is checked
                step_loss += weighted.detach()
                batches += 1
                if ends_step:
                    done += 1
                    if board is not None:
                        board.step(progress.step + 1, step_loss, optimisation.learning_rates())
                    optimisation.step()
                    progress.step += 1
                    step_loss = torch.zeros((), device=context.device)
                    shown.update(done, seen, loss_sum, batches)
                if batches % self.config.optim.check_finite_every == 0:
                    _check_finite(loss_sum, epoch, progress.step, self.state_note, context)
                    if board is not None:
                        board.flush()
        _check_finite(loss_sum, epoch, progress.step, self.state_note, context)
        if unreadable and context.is_main:
            stderr.print(
                f"epoch {epoch + 1}: skipped {len(unreadable)} image(s) that no longer decode "
                f"(--skip-bad), the first: {unreadable[0]}",
                markup=False,
            )
        images_per_s = seen / max(time.perf_counter() - started, 1e-9)
        return distributed.mean_across(loss_sum.item() / max(batches, 1), context), images_per_s


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
    if resume is None:
        config = with_absolute_paths(config)
    run_dir = _run_directory(config, config_name, context, resume)
    log = stderr.print if context.is_main else _silent
    if resume is not None and context.is_main:
        run_log.attach(run_dir)
    state_note = _state_note(run_dir)

    # Data: train and val only. The test split is never looked at while training.
    train_index = _checked_split(config, "train", skip_bad, log)
    val_index = _checked_split(config, "val", skip_bad, log)

    components = build_components(config, context.device)
    _seed_everything(config.seed)  # the new modules' initial weights depend on the seed alone
    model = IntCLIP(components.clip, components.class_text, config.model)
    if config.init_from is not None and resume is None:
        config = config.model_copy(
            update={"init_from": initialise(model, config.init_from, BEST_MODEL)}
        )
        log(f"initialised from {config.init_from.path}")
    channels_last = to_channels_last(model, components.clip.module.visual, config.optim)
    ddp = (
        DistributedDataParallel(model, broadcast_buffers=model.trains_buffers)
        if context.distributed
        else None
    )
    trainable = compiled(ddp or model, config.optim)
    groups = model.parameter_groups()
    log(", ".join(f"{g.role}: {g.count:,} trained parameters" for g in groups))

    # Workers decode and crop; the device converts and normalises (see image_pipeline).
    pipeline = components.image_pipeline(config)
    model_input = components.model_input(pipeline, context.device, channels_last)
    options = LoaderOptions.from_config(config.data, context.device)
    train_set = ImageDataset(train_index, pipeline.train)
    val_set = ImageDataset(val_index, pipeline.eval)
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

    optimizer = _optimizer(config.optim, groups, context.device)
    optimisation = _Optimisation(
        optimizer,
        _scheduler(config.optim, optimizer, plan.steps),
        precision.grad_scaler(config.precision, context.device),
        [p for g in groups for p in g.parameters],
        config.optim.grad_clip,
    )
    progress = TrainingProgress()
    if resume is None and context.is_main:
        _create_run_directory(config, run_dir)
        _bundle_inputs(config, run_dir, components)
        run_log.attach(run_dir)
    if resume is not None:
        progress = _restore(run_dir / LAST_STATE, config, model, optimisation)
        if context.is_main:
            _write_metrics(run_dir / METRICS_FILE, progress.rows)
        log(f"resuming {run_dir} after epoch {progress.epoch} (step {progress.step})")
    board = TensorBoardLog(run_dir) if config.tensorboard and context.is_main else None
    passes = _TrainingPass(
        config, context, loader, seeds, plan, model, trainable, ddp, model_input,
        precision.autocast(config.precision, context.device),
        AsymmetricLoss(**config.loss.model_dump()), optimisation, board, run_log, state_note,
    )  # fmt: skip

    last_epoch = min(config.optim.epochs, stop_after or config.optim.epochs)
    stopped_early = _patience_spent(progress, config.optim)
    for epoch in range(progress.epoch, progress.epoch if stopped_early else last_epoch):
        train_loss, images_per_s = passes.run(epoch, progress)
        with _unreadable_stops_the_run(state_note):
            scores = predict_scores(
                model, val_set, config.optim.eval_batch_size, context, model_input,
                precision=config.precision, loader=val_loader,
            )  # fmt: skip
        if not (np.isfinite(scores).all() and math.isfinite(train_loss)):
            raise NonFiniteLoss(
                f"non-finite {'val scores' if math.isfinite(train_loss) else 'train loss'} "
                f"after epoch {epoch + 1}; stopped, {state_note()}"
            )
        progress.epoch = epoch + 1
        if context.is_main:
            row = _validate(val_index, scores, progress, train_loss, optimisation, images_per_s)
            improved = row["val_mAP"] > progress.best_val_map
            progress.epochs_since_best = 0 if improved else progress.epochs_since_best + 1
            row["epochs_since_best"] = progress.epochs_since_best
            progress.rows.append(row)
            if board is not None:
                board.epoch(row)
            if improved:
                progress.best_val_map = row["val_mAP"]
                save_model(model, run_dir / BEST_MODEL, config)
                atomic_write_text(run_dir / BEST_SUMMARY, stable_json(row))
            _save_state(run_dir / LAST_STATE, config, model, optimisation, progress)
            _write_metrics(run_dir / METRICS_FILE, progress.rows)
            log(
                f"epoch {progress.epoch}/{config.optim.epochs}: loss {train_loss:.4f}, "
                f"val mAP {row['val_mAP']:.2f}, val macro F1 {row['val_macro_f1']:.2f}"
            )
        stopped_early = distributed.broadcast_object(
            _patience_spent(progress, config.optim), context
        )
        distributed.barrier(context)
        if stopped_early:
            break
    if board is not None:
        board.close()
    log(_summary(progress, config.optim, stopped_early))
    return run_dir


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


def resumable_config(run_dir: Path) -> Path:
    """The config file of a run that can be resumed; an error for anything else."""
    if not (run_dir / LAST_STATE).is_file():
        raise UserError(f"{run_dir}: no {LAST_STATE} to resume from")
    return run_dir / CONFIG_FILE


def _silent(*_: object, **__: object) -> None:
    """Ranks other than 0 print nothing."""


def _run_directory(
    config: TrainConfig, config_name: str, context: distributed.Context, resume: Path | None
) -> Path:
    """A new run directory (rank 0 decides, all ranks agree), or the one being resumed."""
    if resume is not None:
        resumable_config(resume)
        return resume
    run_dir = None
    if context.is_main:
        run_dir = config.output_dir / (config.run_name or _fresh_name(config, config_name))
        if (run_dir / LAST_STATE).exists():
            raise UserError(f"{run_dir} already holds a run: resume it with --resume {run_dir}")
        if run_dir.exists():
            raise UserError(
                f"{run_dir} exists already and is not a run to resume: choose another run_name"
            )
    return Path(distributed.broadcast_object(str(run_dir), context))


def _fresh_name(config: TrainConfig, config_name: str) -> str:
    """The config's name and the time, with `-2`, `-3`... if a run of that second exists."""
    stamp = f"{config_name}-{datetime.now():%Y%m%d-%H%M%S}"
    names = (stamp if n == 1 else f"{stamp}-{n}" for n in itertools.count(1))
    return next(name for name in names if not (config.output_dir / name).exists())


def _create_run_directory(config: TrainConfig, run_dir: Path) -> None:
    """Make the new run directory once everything it needs has loaded, so a failed start leaves
    nothing behind. A run never writes into a directory it did not create, and `run_name` is
    one path component (the config validates it), so the run stays inside `output_dir`."""
    output_dir = run_dir.parent
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(
            f"{output_dir}: cannot create the output directory ({err.strerror})"
        ) from err
    try:
        run_dir.mkdir()
    except FileExistsError:
        raise UserError(
            f"{run_dir} exists already and is not a run to resume: choose another run_name"
        ) from None
    except OSError as err:
        raise UserError(f"{run_dir}: cannot create the run directory ({err.strerror})") from err
    save_config(config, run_dir / CONFIG_FILE)


def _bundle_inputs(config: TrainConfig, run_dir: Path, components: Components) -> None:
    """Copies of what `eval` and `predict` need, so the run directory can move (run_bundle)."""
    embeddings = class_embeddings_file(config)[0] if config.model.text == "cached" else None
    bundle_inputs(run_dir, config, components.clip.identity, embeddings)


def _state_note(run_dir: Path) -> Callable[[], str]:
    """What is left to resume from, said truly when the run stops."""

    def note() -> str:
        if (run_dir / LAST_STATE).is_file():
            return f"and {run_dir / LAST_STATE} still holds the last good epoch"
        return f"before any epoch was saved (no {LAST_STATE} yet)"

    return note


def _checked_split(config: TrainConfig, split: str, skip_bad: bool, log) -> LabelIndex:
    """The split, with label and file problems refused, or left out under `--skip-bad`."""
    index = load_split(config.data, split)
    problems = check_index(index, decoded=DecodedImages(cache_root() / DECODED_IMAGES))
    if not problems:
        return index
    if not skip_bad:
        raise UserError(
            f"{split}: {len(problems)} bad entries ({summarize(problems)}), the first: "
            f"{problems[0]}; run intclip-train check-data, or pass --skip-bad"
        )
    log(
        f"{split}: leaving out {len({p.row for p in problems})} bad entries ({summarize(problems)})"
    )
    return index.without([p.row for p in problems])


@contextmanager
def _unreadable_stops_the_run(state_note: Callable[[], str]) -> Iterator[None]:
    """An image that stopped decoding mid-run ends it in one line naming the file, saying what
    is left to resume from (nothing is saved on the way out)."""
    try:
        yield
    except UnreadableImage as err:
        raise UnreadableImage(f"{err}; stopped, {state_note()}") from None


def _batches(batches: Iterable[TrainBatch], state_note: Callable[[], str]) -> Iterator[TrainBatch]:
    with _unreadable_stops_the_run(state_note):
        yield from batches


def _check_finite(
    loss_sum: torch.Tensor,
    epoch: int,
    step: int,
    state_note: Callable[[], str],
    context: distributed.Context,
) -> None:
    """Exit 3 once a loss was nan or inf on any process (all stop together): checked every few
    steps, since each check waits for the device. Nothing is saved before the check, so the
    last good epoch stays on disk."""
    if distributed.all_true(torch.isfinite(loss_sum), context):
        return
    where = (
        f"loss is {loss_sum.item()}"
        if not torch.isfinite(loss_sum)
        else "loss is not finite on another process"
    )
    raise NonFiniteLoss(
        f"{where} at epoch {epoch + 1}, step {step} or before; stopped, {state_note()}"
    )


def _optimizer(
    config: OptimConfig, groups: list[ParameterGroup], device: torch.device
) -> torch.optim.Optimizer:
    """One parameter group per role at `lr` times its multiplier; under `weight_decay_on:
    matrices` gains, biases and scalars go to a second group of that role without decay."""
    param_groups = []
    for group in groups:
        lr = config.lr * config.lr_multipliers.get(group.role, 1.0)
        if config.weight_decay_on == "all":
            split = [(group.role, group.parameters, config.weight_decay)]
        else:
            split = [
                (group.role, [p for p in group.parameters if p.ndim > 1], config.weight_decay),
                (f"{group.role}.no_decay", [p for p in group.parameters if p.ndim <= 1], 0.0),
            ]
        param_groups += [
            {"params": params, "weight_decay": decay, "name": name, "lr": lr}
            for name, params, decay in split
            if params
        ]
    fused = fused_optimizer(device)
    if config.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=config.lr, momentum=config.momentum, **fused)
    return torch.optim.AdamW(param_groups, lr=config.lr, **fused)


def _scheduler(
    config: OptimConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Warm-up, then cosine decay, per group; stepped every batch, changing as `schedule.unit`
    says. A constant warm-up holds every group at `warmup_lr`, whatever its multiplier."""
    schedule = config.schedule
    per_epoch = steps_per_epoch if schedule.unit == "step" else 1
    warmup = round(config.warmup_epochs * per_epoch)
    total = config.epochs * per_epoch
    period = round(schedule.cosine_epochs * per_epoch) if schedule.cosine_epochs else total - warmup

    def position(step: int) -> int:
        return step if schedule.unit == "step" else step // steps_per_epoch

    def factor_for(base_lr: float) -> Callable[[int], float]:
        def factor(step: int) -> float:
            at = position(step)
            if at < warmup:
                if schedule.warmup_lr is not None:
                    return schedule.warmup_lr / base_lr
                return (at + 1) / warmup
            progress = (at - warmup) / max(1, period)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

        return factor

    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, [factor_for(group["lr"]) for group in optimizer.param_groups]
    )


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Augmentation and shuffling depend on (seed, epoch, rank) only, so resuming is exact."""
    _seed_everything((seed * 100_003 + epoch * 1_009 + rank) % 2**31)


def _validate(
    val_index: LabelIndex,
    scores: np.ndarray,
    progress: TrainingProgress,
    train_loss: float,
    optimisation: _Optimisation,
    images_per_s: float,
) -> dict[str, float]:
    """Val metrics at the threshold that is best on val, as the protocol will choose it."""
    labels = (val_index.targets > 0).astype(np.int64)
    threshold = select_threshold(labels, scores)
    metrics = evaluate_split(labels, scores, threshold)
    return {
        "epoch": progress.epoch,
        "step": progress.step,
        "train_loss": train_loss,
        "val_mAP": metrics.mAP,
        "val_macro_f1": metrics.macro_f1,
        "val_micro_f1": metrics.micro_f1,
        "val_samples_f1": metrics.samples_f1,
        "val_threshold": threshold,
        "lr": optimisation.scheduler.get_last_lr()[0],
        "images_per_s": images_per_s,
    }


def _write_metrics(path: Path, rows: list[dict[str, float]]) -> None:
    """The CSV of every epoch `last.pt` holds, rewritten atomically after it: a rerun or a
    resume after a partial epoch never duplicates a row, and the log never runs ahead."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def _rng_state() -> dict:
    numpy_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].copy()), *numpy_state[2:]],
        "python": random.getstate(),
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    random.setstate(_as_tuples(state["python"]))


def _as_tuples(value: object) -> object:
    return tuple(_as_tuples(v) for v in value) if isinstance(value, list | tuple) else value


STATE_FORMAT = "intclip-train-state-v1"
RESUME_FREE_KEYS = frozenset(
    {"device", "data.num_workers", "output_dir", "run_name", "tensorboard"}
)
"""Config keys a resumed run may change: where and how fast it runs, not what it computes."""
KEYS_ADDED_SINCE = {
    "precision": "auto",
    "optim.grad_accumulation": 1,
    "optim.early_stop_patience": None,
    "init_from": None,
}
"""Keys newer than some `last.pt` files, with the value that gives what those runs did."""


def _save_state(
    path: Path,
    config: TrainConfig,
    model: IntCLIP,
    optimisation: _Optimisation,
    progress: TrainingProgress,
) -> None:
    """Everything `--resume` needs, and the config it was trained with, in one atomic file."""
    scaler = optimisation.scaler
    state = {
        "format": STATE_FORMAT,
        "config": dict(config_leaves(config.model_dump(mode="json"))),
        "model": model.trained_state_dict(),
        "optimizer": optimisation.optimizer.state_dict(),
        "scheduler": optimisation.scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": _rng_state(),
        "progress": vars(progress).copy(),
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _restore(
    path: Path, config: TrainConfig, model: IntCLIP, optimisation: _Optimisation
) -> TrainingProgress:
    """The state of `last.pt`, refused when it is not ours or the config changed since."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch reports any damage or foreign pickle as a plain exception
        reason = " ".join(str(err).split())[:200]
        raise UserError(f"{path}: cannot resume from this file ({reason})") from err
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise UserError(f"{path}: not a {STATE_FORMAT} file of intclip-train run; cannot resume")
    recorded, now = state["config"], dict(config_leaves(config.model_dump(mode="json")))
    changed = [
        f"{key} {_recorded(recorded, key)!r} -> {now.get(key)!r}"
        for key in [*now, *(key for key in recorded if key not in now)]
        if key not in RESUME_FREE_KEYS and _recorded(recorded, key) != now.get(key)
    ]
    if changed:
        raise UserError(
            f"{path.parent / CONFIG_FILE} was edited since {path.name} was written "
            f"({'; '.join(changed)}); the run could not continue exactly"
        )
    model.load_trained_state_dict(state["model"], str(path))
    try:
        optimisation.optimizer.load_state_dict(state["optimizer"])
        optimisation.scheduler.load_state_dict(state["scheduler"])
        if optimisation.scaler is not None:
            optimisation.scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        return TrainingProgress(**state["progress"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise UserError(f"{path}: its optimiser or progress do not fit this run ({err})") from err


def _recorded(recorded: dict[str, object], key: str) -> object:
    """A key's value in `last.pt`; keys added since it was written count as their default."""
    return recorded.get(key, KEYS_ADDED_SINCE.get(key))
