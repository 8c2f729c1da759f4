"""What produced a run: the software and its versions, the checkout, the command, the machine
and when, and how its config differs from the shipped config it started from. `run.json`
keeps one `Invocation` per command that worked on the run (the first, then each `--resume`).
"""

from __future__ import annotations

import platform
import shlex
import socket
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from intclip.training.config import (
    PACKAGED_CONFIGS,
    TrainConfig,
    config_leaves,
    load_config,
    with_absolute_paths,
)
from pipeline.common.console import package_version
from pipeline.common.errors import UserError
from pipeline.common.git import git_output

CHECKOUT = Path(__file__).resolve().parents[2]


class Software(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    intclip: str
    git_commit: str | None
    """The commit of the checkout intclip ran from; None for an installed package."""
    git_dirty: bool | None
    """Tracked files changed since that commit."""
    python: str
    torch: str
    torchvision: str
    open_clip: str
    cuda: str | None
    cudnn: str | None


class Invocation(BaseModel):
    """One command that worked on the run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    command: str
    """The exact command line, shell-quoted."""
    cwd: str
    """The directory it ran in (relative paths of the command are relative to it)."""
    hostname: str
    device: str
    """The device trained on, and the name of each GPU the process could see."""
    software: Software
    started: str
    ended: str | None = None
    outcome: str | None = None
    """`finished`, `interrupted` or `failed: <the error>`; None while it runs."""


class ChangedKey(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str
    shipped: Any
    run: Any


class ConfigDiff(BaseModel):
    """The run's config against the shipped config closest to it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    shipped: str
    """The file name of a config in intclip/configs."""
    changed: list[ChangedKey]


def now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def software() -> Software:
    import open_clip
    import torchvision

    commit = git_output(CHECKOUT, "rev-parse", "HEAD") if (CHECKOUT / ".git").exists() else None
    status = (
        git_output(CHECKOUT, "status", "--porcelain", "--untracked-files=no") if commit else None
    )
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return Software(
        intclip=package_version(),
        git_commit=commit.strip() if commit else None,
        git_dirty=bool(status.strip()) if status is not None else None,
        python=platform.python_version(),
        torch=torch.__version__,
        torchvision=torchvision.__version__,
        open_clip=open_clip.__version__,
        cuda=torch.version.cuda,
        cudnn=str(cudnn) if cudnn is not None else None,
    )


def devices(device: torch.device) -> str:
    """`cuda:0 (NVIDIA H100 80GB HBM3)`, or `cpu (x86_64, 2 cores)`."""
    if device.type == "cuda":
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return f"{device} ({', '.join(names)})"
    return f"{device} ({platform.machine()}, {torch.get_num_threads()} threads)"


def invocation(device: torch.device) -> Invocation:
    """This process, started now."""
    return Invocation(
        command=shlex.join(sys.argv),
        cwd=str(Path.cwd()),
        hostname=socket.gethostname(),
        device=devices(device),
        software=software(),
        started=now(),
    )


def ended(started: Invocation, error: BaseException | None) -> Invocation:
    """The invocation as it ended: normally, interrupted, or failed with `error`."""
    if error is None:
        outcome = "finished"
    elif isinstance(error, KeyboardInterrupt) or getattr(error, "interrupted", False):
        outcome = "interrupted"
    else:
        outcome = f"failed: {' '.join(str(error).split())[:300] or type(error).__name__}"
    return started.model_copy(update={"ended": now(), "outcome": outcome})


def config_diff(config: TrainConfig) -> ConfigDiff | None:
    """The keys in which `config` (paths absolute) differs from the shipped config closest to
    it, that config's paths made absolute in this directory as the run's were; None when no
    shipped config can be read here (its taxonomy is relative to the checkout)."""
    run = dict(config_leaves(config.model_dump(mode="json")))
    best: ConfigDiff | None = None
    for path in sorted(PACKAGED_CONFIGS.glob("*.yaml")):
        try:
            shipped_config = with_absolute_paths(load_config(path))
        except (UserError, ValidationError):
            continue
        shipped = dict(config_leaves(shipped_config.model_dump(mode="json")))
        changed = [
            ChangedKey(key=key, shipped=shipped.get(key), run=run.get(key))
            for key in [*run, *(key for key in shipped if key not in run)]
            if shipped.get(key) != run.get(key)
        ]
        if best is None or len(changed) < len(best.changed):
            best = ConfigDiff(shipped=path.name, changed=changed)
    return best


def describe(first: Invocation) -> list[str]:
    """A few lines saying what made a run, as `eval` shows them."""
    made = first.software
    checkout = (
        f", git {made.git_commit[:12]}{' (dirty)' if made.git_dirty else ''}"
        if made.git_commit
        else ""
    )
    return [
        f"trained by intclip {made.intclip}{checkout} on {first.hostname}, {first.device}",
        f"  torch {made.torch}, torchvision {made.torchvision}, open_clip {made.open_clip}, "
        f"CUDA {made.cuda or 'none'}, cuDNN {made.cudnn or 'none'}, Python {made.python}",
        f"  started {first.started} in {first.cwd}: {first.command}",
    ]
