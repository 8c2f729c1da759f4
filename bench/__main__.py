"""`python -m bench [--only NAME ...] [--set NAME.KEY=VALUE ...] [--quick [--write]] [--out FILE]`.

A full run writes its report (BENCHMARKS.md); a `--quick` smoke run only prints, unless
`--write` asks for the report too, so smoke numbers never replace the committed ones.
"""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from bench.machine import describe_machine
from bench.registry import Measure, Settings, discover
from bench.report import render, show
from pipeline.common.errors import UserError
from pipeline.common.files import atomic_write_text


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="Run the speed measures; write BENCHMARKS.md."
    )
    parser.add_argument("--only", action="append", default=[], help="Run only this measure.")
    parser.add_argument(
        "--set", action="append", default=[], metavar="NAME.KEY=VALUE", help="Change a size."
    )
    parser.add_argument(
        "--quick", action="store_true", help="Small sizes: a smoke run; writes no report."
    )
    parser.add_argument(
        "--write", action="store_true", help="Write the report of a --quick run to --out too."
    )
    parser.add_argument("--list", action="store_true", help="List the measures and exit.")
    parser.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"), help="Report file.")
    return parser.parse_args(argv)


def _selected(measures: dict[str, Measure], only: list[str]) -> list[Measure]:
    unknown = [name for name in only if name not in measures]
    if unknown:
        raise UserError(f"--only {unknown[0]}: no such measure (known: {', '.join(measures)})")
    chosen = [measures[name] for name in only] if only else list(measures.values())
    return sorted(chosen, key=lambda m: m.order)


def _settings(measures: list[Measure], overrides: list[str], quick: bool) -> dict[str, Settings]:
    """Each measure's defaults, then its `--quick` sizes, then `--set` values (parsed as YAML)."""
    settings = {m.name: {**m.defaults, **(m.quick if quick else {})} for m in measures}
    for override in overrides:
        key, sep, raw = override.partition("=")
        name, dot, leaf = key.partition(".")
        if not sep or not dot:
            raise UserError(f"--set {override!r}: expected NAME.KEY=VALUE")
        if name not in settings or leaf not in settings[name]:
            raise UserError(f"--set {override!r}: {key} is not a setting of the measures run")
        try:
            settings[name][leaf] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise UserError(f"--set {override!r}: the value is not valid YAML") from None
    return settings


def run(argv: Sequence[str] | None = None) -> int:
    args = _arguments(argv)
    measures = discover()
    if args.list:
        for name, found in sorted(measures.items(), key=lambda item: item[1].order):
            print(f"{name}: {found.title}  {found.defaults}")
        return 0
    chosen = _selected(measures, args.only)
    settings = _settings(chosen, args.set, args.quick)
    machine = describe_machine()
    # Every measure meets the collector as the CLIs leave it after their imports: what those
    # built frozen (pipeline.common.collector), whichever measures ran before it in this process.
    gc.collect()
    gc.freeze()
    results = []
    for found in chosen:
        print(f"== {found.name}: {found.title}", flush=True)
        comparisons = found.run(settings[found.name])
        show(comparisons)
        results.append((found, settings[found.name], comparisons))
    if args.quick and not args.write:
        print(f"a --quick run writes no report ({args.out} unchanged; --write writes it)")
        return 0
    atomic_write_text(args.out, render(machine, results))
    print(f"wrote {args.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    try:
        code = run(argv)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        code = err.exit_code
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
