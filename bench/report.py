"""Printing comparisons as they come, and BENCHMARKS.md once every measure has run."""

from __future__ import annotations

from bench.machine import Machine
from bench.registry import Comparison, Measure, Settings

Results = list[tuple[Measure, Settings, list[Comparison]]]


def _number(value: float) -> str:
    return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"


def _verdict(comparison: Comparison) -> str:
    if comparison.target is None:
        return "no target"
    return f"target {comparison.target}: {'met' if comparison.met else 'MISSED'}"


def show(comparisons: list[Comparison]) -> None:
    for c in comparisons:
        print(
            f"  {c.label}: {c.new.label} {_number(c.new.value)} {c.new.unit} | "
            f"{c.baseline.label} {_number(c.baseline.value)} {c.baseline.unit} | "
            f"ratio {c.ratio:.3g} ({_verdict(c)})",
            flush=True,
        )


def render(machine: Machine, results: Results) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Written by `python -m bench` (`make bench`); both sides of every line were measured in "
        "the same run. Ratio = new / baseline.",
        "",
        "## Machine",
        "",
        *machine.lines(),
        "",
        "## Results",
        "",
        "| measure | comparison | new | baseline | ratio | target |",
        "|---|---|---|---|---|---|",
    ]
    for found, _, comparisons in results:
        for c in comparisons:
            lines.append(
                f"| {found.name} | {c.label} | {c.new.label}: {_number(c.new.value)} "
                f"{c.new.unit} | {c.baseline.label}: {_number(c.baseline.value)} "
                f"{c.baseline.unit} | {c.ratio:.3g} | {_verdict(c)} |"
            )
    lines += ["", "## Notes", ""]
    for found, settings, comparisons in results:
        lines += [f"### {found.name}: {found.title}", "", f"Settings: `{settings}`", ""]
        lines += [f"- {c.label}: {c.note}" for c in comparisons if c.note]
        if any(c.met is False for c in comparisons) and found.missed:
            lines += ["", f"Target missed. {found.missed}"]
        lines.append("")
    return "\n".join(lines)
