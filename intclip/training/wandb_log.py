"""Weights & Biases: one of the trackers (see `trackers`). Offline unless asked otherwise.

Without `WANDB_MODE` or `WANDB_API_KEY` the run is written offline into the run's `wandb/`,
needing no account, key or network; `wandb sync RUN_DIR/wandb/offline-run-*` uploads it later.
A resumed run continues the same W&B run id (kept in run.json).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def wandb_mode() -> str:
    """`WANDB_MODE` when set; online with an API key in the environment; offline otherwise."""
    explicit = os.environ.get("WANDB_MODE")
    if explicit:
        return explicit
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


class WandbLog:
    def __init__(
        self, run_dir: Path, config: dict[str, Any], project: str, run_id: str | None
    ) -> None:
        import wandb

        self.run: Any = wandb.init(
            project=project,
            name=run_dir.name,
            id=run_id,
            resume="allow" if run_id else None,
            dir=str(run_dir),
            mode=wandb_mode(),
            config=config,
            settings=wandb.Settings(silent=True, console="off", save_code=False),
        )
        self.run_id: str = self.run.id

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def report(self, step: int, report: dict[str, Any]) -> None:
        self.run.summary.update(report)

    def flush(self) -> None:
        """W&B's own process writes as data arrives."""

    def close(self, outcome: str) -> None:
        self.run.finish(exit_code=0 if outcome in ("finished", "stopped") else 1)
