"""The experiment trackers a run names in `log.trackers`, behind the one object the loop uses.

Every tracker gets the same things: the config (flat `section.key` names) when the run starts,
per step `train/loss` and `train/lr` (`train/lr/<group>` with several parameter groups), per
epoch the metrics.csv columns below at the run's step count, and the final report when it ends.
Per-step losses stay on the device until the trainer reads the loss anyway (`flush`), so
logging never makes a step wait for the device. Each tracker's library is an optional extra,
imported only when the run names it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import torch

from intclip.training.config import Tracker, TrainConfig, config_leaves
from pipeline.common.errors import UserError

EPOCH_TAGS = {
    "train_loss": "train/epoch_loss",
    "images_per_s": "train/images_per_s",
    "val_mAP": "val/mAP",
    "val_macro_f1": "val/macro_f1",
    "val_micro_f1": "val/micro_f1",
    "val_samples_f1": "val/samples_f1",
    "val_threshold": "val/threshold",
    "epochs_since_best": "val/epochs_since_best",
}
"""metrics.csv column -> tag, logged once per epoch at the run's step count."""


class Backend(Protocol):
    run_id: str | None

    def scalars(self, step: int, values: dict[str, float]) -> None: ...
    def report(self, step: int, report: dict[str, Any]) -> None: ...
    def flush(self) -> None: ...
    def close(self, outcome: str) -> None: ...


def _tensorboard(run_dir: Path, config: TrainConfig, run_id: str | None, resumed: bool) -> Backend:
    from intclip.training.tensorboard_log import TensorBoardLog

    return TensorBoardLog(run_dir, _flat(config), resumed)


def _wandb(run_dir: Path, config: TrainConfig, run_id: str | None, resumed: bool) -> Backend:
    from intclip.training.wandb_log import WandbLog

    return WandbLog(run_dir, _flat(config), config.log.project, run_id)


def _mlflow(run_dir: Path, config: TrainConfig, run_id: str | None, resumed: bool) -> Backend:
    from intclip.training.mlflow_log import MlflowLog

    return MlflowLog(run_dir, _flat(config), config.log.project, run_id)


BACKENDS: dict[Tracker, Callable[[Path, TrainConfig, str | None, bool], Backend]] = {
    "tensorboard": _tensorboard,
    "wandb": _wandb,
    "mlflow": _mlflow,
}


def _flat(config: TrainConfig) -> dict[str, Any]:
    return dict(config_leaves(config.model_dump(mode="json")))


class Trackers:
    """The run's trackers (none is fine: every call is then a no-op). Used as a context
    manager, it closes them however the run ends, telling each how it ended."""

    def __init__(self, backends: dict[str, Backend]) -> None:
        self.backends = backends
        self.pending: list[tuple[int, torch.Tensor, dict[str, float]]] = []

    def ids(self) -> dict[str, str]:
        """What a resumed run needs to continue the same tracker runs (kept in run.json)."""
        return {name: b.run_id for name, b in self.backends.items() if b.run_id is not None}

    def step(self, step: int, loss: torch.Tensor, lrs: dict[str, float]) -> None:
        """Step `step`'s loss (a device tensor) and the learning rate of each parameter group."""
        if self.backends:
            self.pending.append((step, loss.detach(), lrs))

    def flush(self) -> None:
        if not self.pending:
            return
        losses = torch.stack([loss for _, loss, _ in self.pending]).tolist()
        for (step, _, lrs), loss in zip(self.pending, losses, strict=True):
            values = {"train/loss": loss}
            for name, lr in lrs.items():
                values["train/lr" if len(lrs) == 1 else f"train/lr/{name}"] = lr
            self._each("scalars", step, values)
        self.pending.clear()

    def epoch(self, row: dict[str, float]) -> None:
        self.flush()
        values = {tag: float(row[column]) for column, tag in EPOCH_TAGS.items()}
        self._each("scalars", int(row["step"]), values)
        self._each("flush")

    def report(self, step: int, report: dict[str, Any]) -> None:
        self.flush()
        self._each("report", step, report)

    def _each(self, method: str, *args: Any) -> None:
        for backend in self.backends.values():
            getattr(backend, method)(*args)

    def __enter__(self) -> Trackers:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if kind is None:
            self.flush()
        outcome = (
            "finished"
            if kind is None
            else "interrupted"
            if issubclass(kind, KeyboardInterrupt) or getattr(error, "interrupted", False)
            else "failed"
        )
        for backend in self.backends.values():
            backend.close(outcome)


LIBRARIES: dict[Tracker, str] = {
    "tensorboard": "torch.utils.tensorboard",
    "wandb": "wandb",
    "mlflow": "mlflow.tracking",
}
"""What each tracker imports: missing, its extra is not installed."""


def require_trackers(config: TrainConfig) -> None:
    """Import the library of every tracker the config names, before the run starts: a missing
    one is one line naming its extra, and no run directory is made."""
    for name in config.log.trackers:
        try:
            importlib.import_module(LIBRARIES[name])
        except ImportError as err:
            raise UserError(
                f"log.trackers: {name} needs the {name} extra: pip install 'intclip[{name}]' "
                f"({err})"
            ) from None


def open_trackers(
    config: TrainConfig, run_dir: Path, ids: dict[str, str], resumed: bool
) -> Trackers:
    """The trackers `log.trackers` names (`require_trackers` has imported them), continuing
    the tracker runs in `ids` when `resumed`."""
    return Trackers(
        {
            name: BACKENDS[name](run_dir, config, ids.get(name), resumed)
            for name in config.log.trackers
        }
    )
