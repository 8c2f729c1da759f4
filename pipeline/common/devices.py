"""One reader of `--device` / `device:` for every command, so that a bad name or a GPU that is
not there is one line before anything is loaded or written, never a traceback mid-run."""

from __future__ import annotations

import torch

from pipeline.common.errors import UserError


def parse_device(device: str | torch.device) -> torch.device:
    """`auto` (CUDA when available, else CPU), `cpu`, `cuda`, `cuda:1`, ...; checked to exist."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as err:
        raise UserError(f"invalid device {device!r}: {' '.join(str(err).split())}") from None
    if target.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {str(device)!r} requested but CUDA is not available")
        if target.index is not None and target.index >= torch.cuda.device_count():
            raise UserError(
                f"device {str(device)!r} requested but only {torch.cuda.device_count()} "
                "CUDA device(s) exist"
            )
    return target
