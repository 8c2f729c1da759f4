"""The evaluation report of a run: numbers under the protocol, as JSON and a table.

The threshold is always chosen on val; `--split test` applies it to test, `--split val` reports
val at its own best threshold. Coarser taxonomy levels get the same protocol on rolled-up
labels and scores.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict
from rich.table import Table

from intclip.metrics.hierarchy import levels_above_fine
from intclip.metrics.multilabel import (
    INTENTONOMY_SUBSETS,
    SplitMetrics,
    evaluate_protocol,
    evaluate_split,
)
from pipeline.common.files import project_prompts
from pipeline.descriptions.taxonomy import Taxonomy, load_taxonomy

INTENTONOMY_TAXONOMY = project_prompts() / "intentonomy.yaml"


class LevelReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    threshold: float
    metrics: SplitMetrics
    node_ids: list[str]


class EvaluationReport(BaseModel):
    """`fine` holds the split's metrics; `levels` the same for each coarser taxonomy level."""

    model_config = ConfigDict(frozen=True)

    split: str
    threshold: float
    fine: SplitMetrics
    val: SplitMetrics
    class_ids: list[str]
    levels: dict[str, LevelReport]
    fixed_threshold: float | None = None
    """A threshold asked for besides val's (`--threshold`), e.g. the official code's 0.5."""
    at_fixed_threshold: SplitMetrics | None = None
    """The split's fine-level metrics at `fixed_threshold`."""


def build_report(
    split: str,
    val: tuple[np.ndarray, np.ndarray],
    evaluated: tuple[np.ndarray, np.ndarray],
    class_ids: Sequence[str],
    taxonomy: Taxonomy | None,
    fixed_threshold: float | None = None,
) -> EvaluationReport:
    """`val` and `evaluated` are (labels, scores); they are the same arrays for `--split val`.
    `fixed_threshold` adds the split's metrics at that threshold too, chosen on nothing."""
    subsets = INTENTONOMY_SUBSETS if is_intentonomy(class_ids) else None
    result = evaluate_protocol(*val, *evaluated, subsets=subsets)
    levels = {}
    for level in levels_above_fine(taxonomy) if taxonomy else []:
        rolled = [level.roll_up(matrix) for matrix in (*val, *evaluated)]
        level_result = evaluate_protocol(*rolled)
        levels[level.name] = LevelReport(
            threshold=level_result.threshold,
            metrics=level_result.test,
            node_ids=list(level.node_ids),
        )
    return EvaluationReport(
        split=split,
        threshold=result.threshold,
        fine=result.test,
        val=result.val,
        class_ids=list(class_ids),
        levels=levels,
        fixed_threshold=fixed_threshold,
        at_fixed_threshold=(
            evaluate_split(*evaluated, fixed_threshold, subsets)
            if fixed_threshold is not None
            else None
        ),
    )


@functools.cache
def _intentonomy_ids() -> tuple[str, ...]:
    """The committed taxonomy's class ids (none if that file was removed)."""
    if not INTENTONOMY_TAXONOMY.is_file():
        return ()
    return tuple(fine.id for fine in load_taxonomy(INTENTONOMY_TAXONOMY).classes)


def is_intentonomy(class_ids: Sequence[str]) -> bool:
    """The difficulty and content subsets are groups of Intentonomy's own classes: they apply
    when the classes are the committed Intentonomy taxonomy's, in its label order, not to any
    other dataset that happens to have 28 classes."""
    return tuple(class_ids) == _intentonomy_ids()


def report_table(report: EvaluationReport) -> Table:
    table = Table(
        title=f"{report.split}: threshold {report.threshold:g}, chosen on val",
        caption="percent; macro/micro/samples F1 at the threshold, mAP threshold-free",
    )
    for column in ("level", "macro F1", "micro F1", "samples F1", "mAP"):
        table.add_column(column, justify="left" if column == "level" else "right")
    rows = [("fine", report.fine)] + [(n, lv.metrics) for n, lv in report.levels.items()]
    if report.at_fixed_threshold is not None:
        rows.append((f"fine @ {report.fixed_threshold:g}", report.at_fixed_threshold))
    for name, metrics in rows:
        table.add_row(
            name,
            *(
                f"{value:.2f}"
                for value in (metrics.macro_f1, metrics.micro_f1, metrics.samples_f1, metrics.mAP)
            ),
        )
    for subset, value in report.fine.subset_f1.items():
        table.add_row(f"  {subset} classes", f"{value:.2f}", "", "", "")
    return table
