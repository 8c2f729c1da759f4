"""TensorBoard scalars of a run, grouped: `train/` per step and per epoch, `val/` per epoch.

Per-step losses stay on the device until the trainer checks them anyway (`flush`), so logging
them never makes a step wait for the device.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pipeline.common.errors import UserError

TENSORBOARD_DIR = "tensorboard"
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


class TensorBoardLog:
    def __init__(self, run_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise UserError(
                "tensorboard: true needs the tensorboard extra: pip install -e '.[tensorboard]'"
            ) from err
        self.writer: Any = SummaryWriter(str(run_dir / TENSORBOARD_DIR))
        self.pending: list[tuple[int, torch.Tensor, dict[str, float]]] = []

    def step(self, step: int, loss: torch.Tensor, lrs: dict[str, float]) -> None:
        """Step `step`'s loss (a device tensor) and the learning rate of each parameter group:
        `train/lr`, or `train/lr/<group>` when the groups are several."""
        self.pending.append((step, loss.detach(), lrs))

    def flush(self) -> None:
        if not self.pending:
            return
        losses = torch.stack([loss for _, loss, _ in self.pending]).tolist()
        for (step, _, lrs), loss in zip(self.pending, losses, strict=True):
            self.writer.add_scalar("train/loss", loss, step)
            for name, lr in lrs.items():
                self.writer.add_scalar(
                    "train/lr" if len(lrs) == 1 else f"train/lr/{name}", lr, step
                )
        self.pending.clear()

    def epoch(self, row: dict[str, float]) -> None:
        self.flush()
        for column, tag in EPOCH_TAGS.items():
            self.writer.add_scalar(tag, row[column], int(row["step"]))
        self.writer.flush()

    def close(self) -> None:
        self.flush()
        self.writer.close()
