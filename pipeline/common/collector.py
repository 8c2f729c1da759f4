"""The garbage collector during start-up work that allocates much and frees nothing.

Importing torch and open_clip, or openai (thousands of pydantic models), creates long-lived
objects only, yet the collector keeps walking them: on 2 cores `import torch, torchvision,
open_clip` took 4.0 s with it and 2.5 s without (BENCHMARKS.md, cli_start). Such work runs
with the collector paused, and what it built is frozen afterwards so that later collections (a
training run's included) skip it too. Torch-free, so the light commands can import it.

The same imports also leave out what a library imports only for features intclip never uses
(`SKIPPED_OPTIONAL_IMPORTS`).
"""

from __future__ import annotations

import functools
import gc
import importlib
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

TENSOR_MODULES = ("torch", "torchvision", "open_clip")
SKIPPED_OPTIONAL_IMPORTS = ("wandb",)
"""Optional imports the tensor modules make that intclip never uses: open_clip imports timm,
and timm imports wandb where it is installed, for timm's own training summaries (0.3-0.5 s of
every command's start here). They see it as not installed; intclip's W&B tracker imports it
itself when a run asks for it."""
P = ParamSpec("P")
R = TypeVar("R")


@contextmanager
def optional_imports_skipped(names: tuple[str, ...]) -> Iterator[None]:
    """`import name` fails inside the block for each of `names` not yet imported, as if it were
    not installed; after the block it imports as usual."""
    skipped = [name for name in names if name not in sys.modules]
    for name in skipped:
        sys.modules[name] = None  # type: ignore[assignment]  # the import system's "not here"
    try:
        yield
    finally:
        for name in skipped:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]


@contextmanager
def collector_paused() -> Iterator[None]:
    """No collection inside the block; whatever exists at its end is frozen (never collected,
    never walked again), which suits modules and tables kept for the life of the process."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


def import_heavy(modules: tuple[str, ...]) -> None:
    """Import `modules` as every command that needs them does: with the collector paused, and
    `SKIPPED_OPTIONAL_IMPORTS` left out."""
    with collector_paused(), optional_imports_skipped(SKIPPED_OPTIONAL_IMPORTS):
        for name in modules:
            importlib.import_module(name)


def imports_first(
    *modules: str, check: Callable[..., None] | None = None
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """A CLI command whose heavy libraries are imported before it runs, with the collector
    paused. `--help` and usage errors never reach the command, so they still import none;
    `check`, given the command's arguments, runs before the imports, so that a mistake it
    finds (a missing file, options that exclude each other) is told at once."""

    def decorate(command: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(command)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            if check is not None:
                check(*args, **kwargs)
            import_heavy(modules)
            return command(*args, **kwargs)

        return run

    return decorate


tensor_command = imports_first(*TENSOR_MODULES)
"""A command that needs torch: torch, torchvision and open_clip come first."""


def tensor_command_checked(
    check: Callable[..., None],
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """A command that needs torch, whose arguments `check` validates before torch is imported."""
    return imports_first(*TENSOR_MODULES, check=check)
