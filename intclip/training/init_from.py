"""`--init-from`: a new run that starts from another run's trained weights.

Only the trained tensors are taken (semantic branch, aggregation, head, prompt contexts); the
optimiser, the schedule and the epoch count start afresh. The checkpoint's path and sha256 are
written into the new run's config, and so into its checkpoints' headers.
"""

from __future__ import annotations

from pathlib import Path

from intclip.model.trained import TrainedModel
from intclip.training.checkpoint import load_weights
from intclip.training.config import InitFrom
from pipeline.common.errors import UserError
from pipeline.common.files import sha256_file


def checkpoint_of(source: Path, best_model: str) -> Path:
    """The checkpoint `source` names: a run directory's `best_model`, or the file itself."""
    if source.is_dir():
        if not (source / best_model).is_file():
            raise UserError(f"init_from: {source} is a directory without {best_model}")
        return source / best_model
    if not source.is_file():
        raise UserError(f"init_from: {source} not found (a run directory or a .safetensors file)")
    return source


def initialise(model: TrainedModel, source: InitFrom, best_model: str) -> InitFrom:
    """Load the checkpoint `source` names into `model`; its resolved path and sha256."""
    path = checkpoint_of(source.path, best_model)
    digest = sha256_file(path)
    if source.sha256 is not None and source.sha256 != digest:
        raise UserError(f"init_from: {path} has sha256 {digest}, not {source.sha256} as configured")
    load_weights(model, path)
    return InitFrom(path=path, sha256=digest)
