"""The run directory: its files' names, where a new run goes, and what a stopped run can resume.

A run never writes into a directory it did not create, and a failed start leaves nothing behind.
"""

from __future__ import annotations

import itertools
from datetime import datetime
from pathlib import Path

from intclip.runtime import distributed
from intclip.training.config import TrainConfig, save_config
from intclip.training.factory import Components, class_embeddings_file
from intclip.training.provenance import Invocation
from intclip.training.run_bundle import RUN_CONFIG, bundle_inputs
from pipeline.common.errors import UserError

CONFIG_FILE = RUN_CONFIG
METRICS_FILE = "metrics.csv"
LAST_STATE = "last.pt"
BEST_MODEL = "best.safetensors"
BEST_SUMMARY = "best.json"


def resumable_config(run_dir: Path) -> Path:
    """The config file of a run that can be resumed; an error for anything else."""
    if not (run_dir / LAST_STATE).is_file():
        raise UserError(f"{run_dir}: no {LAST_STATE} to resume from")
    return run_dir / CONFIG_FILE


def run_directory(
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


def create_run_directory(config: TrainConfig, run_dir: Path) -> None:
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


def bundle_run_inputs(
    config: TrainConfig, run_dir: Path, components: Components, started: Invocation
) -> None:
    """Copies of what `eval` and `predict` need, so the run directory can move (run_bundle),
    and run.json, which says what made the run."""
    embeddings = class_embeddings_file(config)[0] if config.model.text == "cached" else None
    bundle_inputs(run_dir, config, components.clip.identity, embeddings, started)


class StateNote:
    """What is left to resume from, said truly when the run stops: the loop tells it each
    time `last.pt` is written (the run's start, then after every epoch)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LAST_STATE
        self.epoch: int | None = None

    def saved(self, epoch: int) -> None:
        self.epoch = epoch

    def holds(self) -> str:
        if self.epoch is None:
            return f"no {LAST_STATE} yet"
        if self.epoch == 0:
            return f"{self.path} holds the run's start"
        return f"{self.path} holds epoch {self.epoch}"

    def __call__(self) -> str:
        if self.epoch:
            return f"and {self.path} still holds the last good epoch"
        return f"before any epoch was saved; {self.holds()}"
