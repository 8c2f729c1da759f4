"""One epoch over the training set: micro-batches, optimiser steps, progress and the checks that
stop a run (a non-finite loss, an image that stopped decoding) without saving anything."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from intclip.data.dataset import UnreadableImage
from intclip.data.loader import EpochSeeds, TrainBatch
from intclip.model.trained import TrainedModel
from intclip.runtime import distributed
from intclip.training.accumulation import AccumulationPlan
from intclip.training.config import TrainConfig
from intclip.training.loss import AsymmetricLoss
from intclip.training.optimizer import Optimisation
from intclip.training.progress import EpochProgress
from intclip.training.run_log import RunLog
from intclip.training.state import TrainingProgress, seed_epoch
from intclip.training.trackers import Trackers
from pipeline.common.console import stderr
from pipeline.common.errors import EXIT_FAILED, UserError


class NonFiniteLoss(UserError):
    """Training diverged; the last good checkpoint is kept untouched."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_FAILED)


@dataclass(frozen=True)
class EpochTrained:
    """What one pass over the training set gives the epoch's metrics.csv row."""

    loss: float
    """Mean micro-batch loss, across processes."""
    images_per_s: float
    learning_rates: dict[str, float]
    """The learning rate of each parameter group at the epoch's last optimiser step."""


@dataclass
class TrainingPass:
    """One epoch over the training set: micro-batches, optimiser steps, progress, checks."""

    config: TrainConfig
    context: distributed.Context
    loader: DataLoader
    seeds: EpochSeeds
    plan: AccumulationPlan
    model: TrainedModel
    trainable: nn.Module
    ddp: DistributedDataParallel | None
    model_input: Callable[[torch.Tensor], torch.Tensor]
    autocast: AbstractContextManager
    criterion: AsymmetricLoss
    optimisation: Optimisation
    trackers: Trackers
    run_log: RunLog
    state_note: Callable[[], str]

    def run(self, epoch: int, progress: TrainingProgress) -> EpochTrained:
        """Train epoch `epoch`, counting steps in `progress`."""
        context, plan, trackers, optimisation = (
            self.context, self.plan, self.trackers, self.optimisation
        )  # fmt: skip
        seed_epoch(self.config.seed, epoch, context.rank)
        self.seeds.set_epoch(epoch)
        self.model.train()
        started, seen, batches, done, unreadable = time.perf_counter(), 0, 0, 0, []
        loss_sum = torch.zeros((), device=context.device)  # on the device: no sync per step
        step_loss = torch.zeros((), device=context.device)
        shown = EpochProgress(
            epoch, self.config.optim.epochs, plan.steps, self.run_log, context.is_main
        )
        used = optimisation.learning_rates()
        with shown:
            for micro, batch in enumerate(batches_of(self.loader, self.state_note)):
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
                shown.smooth(loss.detach())
                step_loss += weighted.detach()
                batches += 1
                if ends_step:
                    done += 1
                    used = optimisation.learning_rates()
                    trackers.step(progress.step + 1, step_loss, used)
                    optimisation.step()
                    progress.step += 1
                    step_loss = torch.zeros((), device=context.device)
                    shown.update(done, seen, loss_sum, batches, used)
                if batches % self.config.optim.check_finite_every == 0:
                    check_finite(loss_sum, epoch, progress.step, self.state_note, context)
                    trackers.flush()
        check_finite(loss_sum, epoch, progress.step, self.state_note, context)
        if unreadable and context.is_main:
            stderr.print(
                f"epoch {epoch + 1}: skipped {len(unreadable)} image(s) that no longer decode "
                f"(--skip-bad), the first: {unreadable[0]}",
                markup=False,
            )
        images_per_s = seen / max(time.perf_counter() - started, 1e-9)
        loss_mean = distributed.mean_across(loss_sum.item() / max(batches, 1), context)
        return EpochTrained(loss_mean, images_per_s, used)


@contextmanager
def unreadable_stops_the_run(state_note: Callable[[], str]) -> Iterator[None]:
    """An image that stopped decoding mid-run ends it in one line naming the file, saying what
    is left to resume from (nothing is saved on the way out)."""
    try:
        yield
    except UnreadableImage as err:
        raise UnreadableImage(f"{err}; stopped, {state_note()}") from None


def batches_of(
    batches: Iterable[TrainBatch], state_note: Callable[[], str]
) -> Iterator[TrainBatch]:
    with unreadable_stops_the_run(state_note):
        yield from batches


def check_finite(
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
