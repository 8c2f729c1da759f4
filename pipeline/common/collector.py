"""The garbage collector during start-up work that allocates much and frees nothing.

Importing torch and open_clip, or openai (thousands of pydantic models), creates long-lived
objects only, yet the collector keeps walking them: on 2 cores `import torch, torchvision,
open_clip` took 4.0 s with it and 2.5 s without (BENCHMARKS.md, cli_start). Such work runs
with the collector paused, and what it built is frozen afterwards so that later collections (a
training run's included) skip it too. Torch-free, so the light commands can import it.
"""

from __future__ import annotations

import functools
import gc
import importlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

TENSOR_MODULES = ("torch", "torchvision", "open_clip")
P = ParamSpec("P")
R = TypeVar("R")


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
            with collector_paused():
                for name in modules:
                    importlib.import_module(name)
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
