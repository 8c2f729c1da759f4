"""Runs over several seeds, and their summary: the mean and spread of every test metric.

`intclip-train run --seeds 0,1,2,3,4` trains one run per seed in a group directory
(`<output_dir>/<run_name>/seed-<s>/`), each choosing its best epoch and thresholds on val alone,
evaluates each on test, and writes `seeds.json` into the group: per metric, every seed's value,
the mean and the sample standard deviation. The mean and the standard deviation also go to
`results.csv` beside the group, as rows `statistic: mean` and `std`. `eval --run GROUP` and
`score --seeds GROUP` compute the same summary again, from the models or from their saved
score matrices.

Rerunning the same command with the same `run_name` continues the group: finished seeds are
evaluated again, unfinished ones resumed exactly, missing ones trained.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError
from rich.table import Table

from intclip.evaluation.evaluate import evaluate_run
from intclip.evaluation.results_table import (
    METRIC_COLUMNS,
    append_rows,
    read_results,
    report_row,
    results_path,
)
from intclip.metrics.report import EvaluationReport
from intclip.training.config import TrainConfig, load_config, with_absolute_paths
from intclip.training.loop import train
from intclip.training.run_dir import LAST_STATE, resumable_config
from pipeline.common.errors import UserError
from pipeline.common.files import atomic_write_text, stable_json
from pipeline.common.safe_load import load_json, read_text_file

SEEDS_FILE = "seeds.json"
SEED_RUN_PREFIX = "seed-"


class Spread(BaseModel):
    """One metric over the seeds: each seed's value, their mean and sample standard deviation
    (n - 1 in the denominator; 0 for a single seed)."""

    model_config = ConfigDict(frozen=True)

    values: list[float]
    mean: float
    std: float


class SeedSummary(BaseModel):
    """`seeds.json`: the seeds of a group and, once evaluated, every metric over them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["intclip-seeds-v1"] = "intclip-seeds-v1"
    seeds: list[int]
    split: str | None = None
    metrics: dict[str, Spread] = {}
    """Keyed like the metric columns of results.csv; empty until the seeds are evaluated."""


def parse_seeds(text: str) -> list[int]:
    """`0,1,2,3,4` -> [0, 1, 2, 3, 4]: distinct integers, in the order given."""
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise UserError(
            f"--seeds {text!r}: expected integers joined by commas, e.g. 0,1,2"
        ) from None
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds {text!r}: a seed is listed twice")
    return seeds


def seed_run(group: Path, seed: int) -> Path:
    return Path(group) / f"{SEED_RUN_PREFIX}{seed}"


def read_summary(group: Path) -> SeedSummary | None:
    """The group's `seeds.json`, or None when `group` is not a group of seed runs."""
    path = Path(group) / SEEDS_FILE
    if not path.is_file():
        return None
    try:
        return SeedSummary.model_validate(load_json(read_text_file(path, "seeds summary"), path))
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise UserError(f"{path}: not an intclip seeds summary ({where}: {first['msg']})") from None


def summarize(seeds: Sequence[int], reports: Sequence[EvaluationReport]) -> SeedSummary:
    """Every metric column of results.csv over the seeds' reports."""
    rows = [report_row("", report) for report in reports]
    metrics = {}
    for column in METRIC_COLUMNS:
        values = [float(row[column]) for row in rows]
        std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        metrics[column] = Spread(values=values, mean=float(np.mean(values)), std=std)
    return SeedSummary(seeds=list(seeds), split=reports[0].split, metrics=metrics)


def summary_rows(name: str, summary: SeedSummary) -> list[dict[str, object]]:
    """The two rows of results.csv for a summary: its mean and its standard deviation."""
    seeds = ",".join(map(str, summary.seeds))
    rows = []
    for statistic in ("mean", "std"):
        row: dict[str, object] = {"run": name, "split": summary.split}
        row |= {metric: getattr(spread, statistic) for metric, spread in summary.metrics.items()}
        rows.append(row | {"config_hash": "", "statistic": statistic, "seeds": seeds})
    return rows


def record_summary(group: Path, summary: SeedSummary) -> None:
    """`seeds.json` in the group; its mean and std rows in results.csv beside the group."""
    group = Path(group)
    atomic_write_text(group / SEEDS_FILE, stable_json(summary.model_dump(mode="json")))
    append_rows(results_path(group), summary_rows(group.name, summary))


def summary_table(group: Path, summary: SeedSummary) -> Table:
    """Mean, standard deviation and each seed's value of every metric, in percent."""
    seeds = ", ".join(map(str, summary.seeds))
    table = Table(
        title=f"{Path(group).name}: {summary.split} over seeds {seeds}",
        caption="percent (threshold: a probability); std: sample standard deviation",
    )
    for column in ("metric", "mean", "std", *(f"seed {seed}" for seed in summary.seeds)):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for name in (column for column in METRIC_COLUMNS if column in summary.metrics):
        spread = summary.metrics[name]
        shown = [f"{value:.2f}" for value in (spread.mean, spread.std, *spread.values)]
        table.add_row(name, *shown)
    return table


Log = Callable[[str], None]


def run_seeds(
    config: TrainConfig,
    config_name: str,
    seeds: Sequence[int],
    skip_bad: bool,
    device: str,
    log: Log,
) -> Path:
    """Train one run per seed in a group directory, evaluate each on test, record the
    summary; return the group directory (see the module docstring)."""
    config = with_absolute_paths(config)
    name = config.run_name or f"{config_name}-seeds-{datetime.now():%Y%m%d-%H%M%S}"
    group = config.output_dir / name
    read_results(results_path(group))  # damaged tables stop us before hours of training
    created = _open_group(group, seeds)
    try:
        for seed in seeds:
            _train_seed(config, config_name, group, seed, skip_bad, log)
    except BaseException:
        if created and not any(seed_run(group, seed).exists() for seed in seeds):
            _remove(group, created)  # a failed start leaves nothing behind
        raise
    evaluate_group(group, "test", device)
    return group


def _train_seed(
    config: TrainConfig, config_name: str, group: Path, seed: int, skip_bad: bool, log: Log
) -> None:
    """Train the seed's run, or continue it where it stopped (nothing, when it finished)."""
    run_dir = seed_run(group, seed)
    if (run_dir / LAST_STATE).is_file():
        log(f"seed {seed}: continuing {run_dir}")
        train(load_config(resumable_config(run_dir)), run_dir.name, run_dir, skip_bad)
        return
    log(f"seed {seed}: training {run_dir}")
    seeded = config.model_copy(update={"seed": seed, "output_dir": group, "run_name": run_dir.name})
    train(seeded, config_name, None, skip_bad)


def _remove(group: Path, created: list[Path]) -> None:
    """The group, and the folders above it that were made for it."""
    shutil.rmtree(group, ignore_errors=True)
    for folder in created[1:]:
        try:
            folder.rmdir()
        except OSError:
            return


def _open_group(group: Path, seeds: Sequence[int]) -> list[Path]:
    """Create the group with its `seeds.json`, or continue one made for the same seeds; the
    folders created for it (the group first), none when it existed."""
    summary = read_summary(group)
    if summary is not None:
        if summary.seeds != list(seeds):
            raise UserError(
                f"{group} holds the seeds {summary.seeds}, not {list(seeds)}: choose another "
                "run_name, or give the same --seeds to continue it"
            )
        return []
    if group.exists():
        raise UserError(f"{group} exists already and is not a group of seed runs")
    created = [folder for folder in (group, *group.parents) if not folder.exists()]
    try:
        group.mkdir(parents=True)
    except OSError as err:
        raise UserError(f"{group}: cannot create the directory ({err.strerror})") from err
    atomic_write_text(group / SEEDS_FILE, stable_json(SeedSummary(seeds=list(seeds)).model_dump()))
    return created


def evaluate_group(
    group: Path,
    split: str,
    device: str,
    fixed_threshold: float | None = None,
    pretrained: Path | None = None,
    rerank_top_k: int | None = None,
) -> SeedSummary | None:
    """`eval` of every seed run of the group, then their summary, recorded (rank 0; None on
    the other torchrun ranks)."""
    summary = _require_group(group)
    reports = [
        evaluate_run(
            seed_run(group, seed), split, device, fixed_threshold, pretrained, rerank_top_k
        )
        for seed in summary.seeds
    ]
    if any(report is None for report in reports):
        return None
    summarized = summarize(summary.seeds, reports)
    record_summary(group, summarized)
    return summarized


def _require_group(group: Path) -> SeedSummary:
    summary = read_summary(group)
    if summary is None:
        raise UserError(f"{group}: no {SEEDS_FILE}; is it a group of intclip-train run --seeds?")
    missing = [seed for seed in summary.seeds if not seed_run(group, seed).is_dir()]
    if missing:
        raise UserError(f"{group}: no run of seed {missing[0]} ({seed_run(group, missing[0])})")
    return summary


def group_matrices(group: Path) -> tuple[SeedSummary, list[dict[str, Path]]]:
    """The group's seeds and, per seed, the score and label files its `eval` saved, keyed like
    `score`'s options."""
    summary = _require_group(group)
    files = []
    for seed in summary.seeds:
        run_dir = seed_run(group, seed)
        found = {
            f"{split}_{kind}": run_dir / f"{split}_{kind}.npy"
            for split in ("val", "test")
            for kind in ("scores", "labels")
        }
        absent = [path for path in found.values() if not path.is_file()]
        if absent:
            raise UserError(f"{absent[0]}: missing; run intclip-train eval --run {group} first")
        files.append(found)
    return summary, files
