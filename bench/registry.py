"""The measures' registry and what a measure reports: two sides, their ratio, a target."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

Settings = dict[str, Any]


@dataclass(frozen=True)
class Side:
    label: str
    value: float
    unit: str


@dataclass(frozen=True)
class Target:
    """`ratio >= value` (a speed-up to reach) or `ratio <= value` (a share to stay under)."""

    op: Literal[">=", "<="]
    value: float

    def met(self, ratio: float) -> bool:
        return ratio >= self.value if self.op == ">=" else ratio <= self.value

    def __str__(self) -> str:
        return f"{self.op} {self.value:g}"


@dataclass(frozen=True)
class Comparison:
    """One line of the report: `ratio` is new / baseline in the sides' own unit."""

    label: str
    new: Side
    baseline: Side
    target: Target | None = None
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.new.value / self.baseline.value if self.baseline.value else float("inf")

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.target.met(self.ratio)


Run = Callable[[Settings], list[Comparison]]


@dataclass(frozen=True)
class Measure:
    """`run(settings)` measures both sides; `missed` says why a target can be missed and what
    would reach it, printed under a missed target."""

    name: str
    title: str
    defaults: Settings
    run: Run
    missed: str = ""
    quick: Settings = field(default_factory=dict)
    order: int = 100


MEASURES: dict[str, Measure] = {}


def measure(
    name: str,
    title: str,
    defaults: Settings,
    missed: str = "",
    quick: Settings | None = None,
    order: int = 100,
) -> Callable[[Run], Run]:
    """Register the decorated `run(settings)` under `name`; `quick` overrides for `--quick`,
    `order` places it in the report (the issue's numbering)."""

    def register(run: Run) -> Run:
        MEASURES[name] = Measure(name, title, defaults, run, missed, quick or {}, order)
        return run

    return register


def discover() -> dict[str, Measure]:
    """Every measure module under `bench/measures`, imported so that it registers."""
    from bench import measures

    for module in pkgutil.iter_modules(measures.__path__):
        importlib.import_module(f"{measures.__name__}.{module.name}")
    return MEASURES
