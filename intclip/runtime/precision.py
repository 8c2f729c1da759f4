"""The numeric precision of a run: the autocast of its forward pass, and fp16's loss scaling.

`auto` keeps what a run did before the key existed: bf16 autocast on CUDA (no loss scaling
needed, fp32's range), plain fp32 elsewhere. `fp16` is the official IntCLIP code's choice; its
narrow range needs a scaled loss, so it comes with a `torch.amp.GradScaler`.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Literal

import torch

from pipeline.common.errors import UserError

Precision = Literal["auto", "fp32", "bf16", "fp16"]

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve(precision: Precision, device: torch.device) -> str:
    """`fp32`, `bf16` or `fp16`, refused with one line where this device cannot run it."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision in AUTOCAST_DTYPES and not torch.amp.is_autocast_available(device.type):
        raise UserError(f"precision: {precision} needs autocast, which torch lacks on {device}")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError(f"precision: bf16 is not supported by {device}; use fp16 or fp32")
    return precision


def autocast(precision: Precision, device: torch.device) -> AbstractContextManager:
    """The context the forward pass runs under."""
    dtype = AUTOCAST_DTYPES.get(resolve(precision, device))
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def grad_scaler(precision: Precision, device: torch.device) -> torch.amp.GradScaler | None:
    """fp16's loss scaler (its state goes into `last.pt`); None for the other precisions."""
    if resolve(precision, device) != "fp16":
        return None
    return torch.amp.GradScaler(device.type)
