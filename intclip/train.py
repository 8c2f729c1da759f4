"""The training loop, top to bottom: data, model, optimiser, epochs, validation, checkpoints.

Honest by construction: the test split is never loaded here, the best checkpoint is chosen on
val alone, and every epoch's randomness derives from (seed, epoch), so a resumed run continues
exactly where it stopped.
"""

from __future__ import annotations

import csv
import io
import math
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from intclip import distributed
from intclip.acceleration import compiled, fused_optimizer, to_channels_last
from intclip.checkpoint import save_model
from intclip.config import OptimConfig, TrainConfig, config_leaves, save_config
from intclip.data import ImageDataset, LabelIndex, UnreadableImage, load_split
from intclip.data_check import DecodedImages, check_index, summarize
from intclip.evaluation import predict_scores
from intclip.factory import build_components
from intclip.loader import LoaderOptions, TrainBatch, scoring_loader, train_loader
from intclip.loss import AsymmetricLoss
from intclip.metrics import evaluate_split, select_threshold
from intclip.model import IntCLIP, ParameterGroup
from pipeline.console import stderr
from pipeline.errors import EXIT_FAILED, UserError
from pipeline.files import atomic_write_bytes, atomic_write_text, cache_root, stable_json

CONFIG_FILE = "config.yaml"
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
    rows: list[dict[str, float]] = field(default_factory=list)  # metrics.csv, one per epoch


def train(
    config: TrainConfig,
    config_name: str,
    resume: Path | None = None,
    skip_bad: bool = False,
    stop_after: int | None = None,
) -> Path:
    """Train as configured; return the run directory.

    `stop_after` ends the run once that many epochs are complete, with the schedule of the
    full run, so that `--resume` continues it exactly.
    """
    context = distributed.setup(config.device)
    try:
        return _train(config, config_name, context, resume, skip_bad, stop_after)
    finally:
        distributed.teardown()


def _train(
    config: TrainConfig,
    config_name: str,
    context: distributed.Context,
    resume: Path | None,
    skip_bad: bool,
    stop_after: int | None,
) -> Path:
    run_dir = _run_directory(config, config_name, context, resume)
    log = stderr.print if context.is_main else _silent
    state_note = _state_note(run_dir)

    # Data: train and val only. The test split is never looked at while training.
    train_index = _checked_split(config, "train", skip_bad, log)
    val_index = _checked_split(config, "val", skip_bad, log)

    components = build_components(config, context.device)
    _seed_everything(config.seed)  # the new modules' initial weights depend on the seed alone
    model = IntCLIP(components.clip, components.class_text, config.model)
    channels_last = to_channels_last(model, components.clip.module.visual, config.optim)
    trainable = DistributedDataParallel(model) if context.distributed else model
    trainable = compiled(trainable, config.optim)
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
    steps_per_epoch = math.ceil(len(train_set) / (batch_size * context.world_size))

    optimizer = _optimizer(config.optim, groups, context.device)
    scheduler = _scheduler(config.optim, optimizer, steps_per_epoch)
    criterion = AsymmetricLoss(**config.loss.model_dump())
    progress = TrainingProgress()
    if resume is None and context.is_main:
        _create_run_directory(config, run_dir)
    if resume is not None:
        progress = _restore(run_dir / LAST_STATE, config, model, optimizer, scheduler)
        if context.is_main:
            _write_metrics(run_dir / METRICS_FILE, progress.rows)
        log(f"resuming {run_dir} after epoch {progress.epoch} (step {progress.step})")
    writer = _tensorboard(config, run_dir) if context.is_main else None
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if context.device.type == "cuda"
        else nullcontext()
    )

    loader, seeds = train_loader(
        train_set, batch_size, config.seed, context, options, skip_unreadable=skip_bad
    )
    val_loader = scoring_loader(
        val_set, config.optim.eval_batch_size, context, options, persistent=True
    )
    last_epoch = min(config.optim.epochs, stop_after or config.optim.epochs)
    for epoch in range(progress.epoch, last_epoch):
        _seed_epoch(config.seed, epoch, context.rank)
        seeds.set_epoch(epoch)
        model.train()
        started, seen, batches, unreadable = time.perf_counter(), 0, 0, []
        loss_sum = torch.zeros((), device=context.device)  # on the device: no sync per step
        for batch in _batches(_progress_bar(loader, epoch, context), state_note):
            unreadable += batch.skipped
            if batch.images is None:  # every image of this rank's batch was skipped
                if context.distributed:  # the other ranks would wait for its gradients
                    raise UnreadableImage(
                        f"a whole batch no longer decodes on rank {context.rank}, the first: "
                        f"{batch.skipped[0]}; stopped, {state_note()}"
                    )
                continue
            images = model_input(batch.images)
            targets = batch.targets.to(context.device, non_blocking=True)
            with autocast:
                logits = trainable(images)
            loss = criterion(logits.float(), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.optim.grad_clip:
                torch.nn.utils.clip_grad_norm_(
                    [p for g in groups for p in g.parameters], config.optim.grad_clip
                )
            optimizer.step()
            scheduler.step()
            progress.step += 1
            seen += len(images) * context.world_size
            loss_sum += loss.detach()  # a nan or inf stays in the sum until it is checked
            batches += 1
            if batches % config.optim.check_finite_every == 0:
                _check_finite(loss_sum, epoch, progress.step, state_note)
        _check_finite(loss_sum, epoch, progress.step, state_note)
        if unreadable:
            log(
                f"epoch {epoch + 1}: skipped {len(unreadable)} image(s) that no longer decode "
                f"(--skip-bad), the first: {unreadable[0]}"
            )
        images_per_s = seen / max(time.perf_counter() - started, 1e-9)
        train_loss = distributed.mean_across(loss_sum.item() / max(batches, 1), context)

        with _unreadable_stops_the_run(state_note):
            scores = predict_scores(
                model,
                val_set,
                config.optim.eval_batch_size,
                context,
                model_input,
                loader=val_loader,
            )
        if not (np.isfinite(scores).all() and math.isfinite(train_loss)):
            raise NonFiniteLoss(
                f"non-finite {'val scores' if math.isfinite(train_loss) else 'train loss'} "
                f"after epoch {epoch + 1}; stopped, {state_note()}"
            )
        progress.epoch = epoch + 1
        if context.is_main:
            row = _validate(val_index, scores, progress, train_loss, scheduler, images_per_s)
            progress.rows.append(row)
            if writer is not None:
                for key, value in row.items():
                    writer.add_scalar(key, value, progress.step)
            if row["val_mAP"] > progress.best_val_map:
                progress.best_val_map = row["val_mAP"]
                save_model(model, run_dir / BEST_MODEL, config)
                atomic_write_text(run_dir / BEST_SUMMARY, stable_json(row))
            _save_state(run_dir / LAST_STATE, config, model, optimizer, scheduler, progress)
            _write_metrics(run_dir / METRICS_FILE, progress.rows)
            log(
                f"epoch {progress.epoch}/{config.optim.epochs}: loss {train_loss:.4f}, "
                f"val mAP {row['val_mAP']:.2f}, val macro F1 {row['val_macro_f1']:.2f}"
            )
        distributed.barrier(context)
    if writer is not None:
        writer.close()
    return run_dir


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
        name = config.run_name or f"{config_name}-{datetime.now():%Y%m%d-%H%M%S}"
        run_dir = config.output_dir / name
        if (run_dir / LAST_STATE).exists():
            raise UserError(f"{run_dir} already holds a run: resume it with --resume {run_dir}")
        if run_dir.exists():
            raise UserError(
                f"{run_dir} exists already and is not a run to resume: choose another run_name"
            )
    return Path(distributed.broadcast_object(str(run_dir), context))


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


def _batches(batches: Iterator[TrainBatch], state_note: Callable[[], str]) -> Iterator[TrainBatch]:
    with _unreadable_stops_the_run(state_note):
        yield from batches


def _check_finite(
    loss_sum: torch.Tensor, epoch: int, step: int, state_note: Callable[[], str]
) -> None:
    """Exit 3 once a loss was nan or inf: checked every few steps, since each check waits for
    the device. Nothing is saved before the check, so the last good epoch stays on disk."""
    if not torch.isfinite(loss_sum):
        raise NonFiniteLoss(
            f"loss is {loss_sum.item()} at epoch {epoch + 1}, step {step} or before; "
            f"stopped, {state_note()}"
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


def _progress_bar(loader: DataLoader, epoch: int, context: distributed.Context) -> Iterator:
    if not context.is_main:
        yield from loader
        return
    with Progress(
        f"epoch {epoch + 1}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=stderr,
        transient=True,
    ) as bar:
        task = bar.add_task("train", total=len(loader))
        for batch in loader:
            yield batch
            bar.advance(task)


def _validate(
    val_index: LabelIndex,
    scores: np.ndarray,
    progress: TrainingProgress,
    train_loss: float,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
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
        "lr": scheduler.get_last_lr()[0],
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


def _save_state(
    path: Path,
    config: TrainConfig,
    model: IntCLIP,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    progress: TrainingProgress,
) -> None:
    """Everything `--resume` needs, and the config it was trained with, in one atomic file."""
    state = {
        "format": STATE_FORMAT,
        "config": dict(config_leaves(config.model_dump(mode="json"))),
        "model": model.trained_state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": _rng_state(),
        "progress": vars(progress).copy(),
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _restore(
    path: Path,
    config: TrainConfig,
    model: IntCLIP,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
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
        f"{key} {recorded.get(key)!r} -> {now.get(key)!r}"
        for key in [*now, *(key for key in recorded if key not in now)]
        if key not in RESUME_FREE_KEYS and recorded.get(key) != now.get(key)
    ]
    if changed:
        raise UserError(
            f"{path.parent / CONFIG_FILE} was edited since {path.name} was written "
            f"({'; '.join(changed)}); the run could not continue exactly"
        )
    model.load_trained_state_dict(state["model"], str(path))
    try:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        return TrainingProgress(**state["progress"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise UserError(f"{path}: its optimiser or progress do not fit this run ({err})") from err


def _tensorboard(config: TrainConfig, run_dir: Path):
    if not config.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise UserError(
            "tensorboard: true needs the tensorboard extra: pip install -e '.[tensorboard]'"
        ) from err
    return SummaryWriter(str(run_dir / "tensorboard"))
