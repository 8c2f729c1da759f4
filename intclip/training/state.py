"""What `last.pt` holds and restores: the model's trained weights, the optimiser, the schedule,
every random generator and the run's progress, refused when the config changed since.

Every epoch's randomness derives from (seed, epoch, rank), so a resumed run continues exactly.
The file is torch's zip archive, which keeps a CRC-32 checksum of every record: all of them are
checked before anything is loaded, so a damaged `last.pt` is refused, not trained into NaN.
"""

from __future__ import annotations

import io
import random
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from intclip.model.trained import TrainedModel
from intclip.training.config import TrainConfig, config_leaves
from intclip.training.optimizer import Optimisation
from intclip.training.run_dir import CONFIG_FILE
from pipeline.common.errors import UserError
from pipeline.common.files import atomic_write_bytes


@dataclass
class TrainingProgress:
    """Where a run stands: what `last.pt` restores besides the model and the optimiser."""

    epoch: int = 0  # epochs completed
    step: int = 0
    best_val_map: float = -1.0
    epochs_since_best: int = 0  # validations without a better val mAP, for early stopping
    rows: list[dict[str, float]] = field(default_factory=list)  # metrics.csv, one per epoch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Augmentation and shuffling depend on (seed, epoch, rank) only, so resuming is exact."""
    seed_everything((seed * 100_003 + epoch * 1_009 + rank) % 2**31)


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
    "model.input": "images",
}
"""Keys newer than some `last.pt` files, with the value that gives what those runs did."""


def save_state(
    path: Path,
    config: TrainConfig,
    model: TrainedModel,
    optimisation: Optimisation,
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


def restore_state(
    path: Path, config: TrainConfig, model: TrainedModel, optimisation: Optimisation
) -> TrainingProgress:
    """The state of `last.pt`, refused when it is damaged, not ours, or the config changed
    since."""
    damaged = _damaged_record(path)
    if damaged is not None:
        raise UserError(
            f"{path}: damaged: its record {damaged} does not match the checksum written with "
            "it; cannot resume from this file"
        )
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


def _damaged_record(path: Path) -> str | None:
    """The first record of the archive whose bytes fail their CRC-32, or None. An archive
    that cannot even be opened is left to torch.load, whose error names the damage."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip()
    except (OSError, zipfile.BadZipFile, ValueError, EOFError):
        return None


def _recorded(recorded: dict[str, object], key: str) -> object:
    """A key's value in `last.pt`; keys added since it was written count as their default."""
    return recorded.get(key, KEYS_ADDED_SINCE.get(key))
