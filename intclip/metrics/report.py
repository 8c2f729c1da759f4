"""The evaluation report of a run, or of saved score matrices: numbers under the protocol, as
JSON, tables and a chart. `eval`, `zeroshot` and `score` all build it here, so they give the
same rows for the same matrices.

Thresholds are always chosen on val; `--split test` applies them to test, `--split val` reports
val at its own best thresholds. Three threshold rules are reported side by side: the global
threshold (the protocol), one threshold per class, and the fixed 0.5. Coarser taxonomy levels
get the protocol's global threshold on rolled-up labels and scores.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from rich.table import Table

from intclip.metrics.hierarchy import levels_above_fine
from intclip.metrics.multilabel import (
    FIXED_THRESHOLD,
    INTENTONOMY_SUBSETS,
    ScoreSummary,
    SplitMetrics,
    evaluate_protocol,
    evaluate_split,
)
from intclip.metrics.score_inputs import read_score_split
from pipeline.common.errors import UserError
from pipeline.common.files import project_prompts
from pipeline.descriptions.taxonomy import Taxonomy, load_taxonomy

INTENTONOMY_TAXONOMY = project_prompts() / "intentonomy.yaml"


class LevelReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    threshold: float
    metrics: SplitMetrics
    node_ids: list[str]


class EvaluationReport(BaseModel):
    """`fine` holds the split's metrics at the global threshold; `levels` the same for each
    coarser taxonomy level; `per_class` and `at_0.5` the split's fine-level metrics under the
    other two threshold rules. JSON keys are the field names, `at_half` written `at_0.5`."""

    model_config = ConfigDict(frozen=True, serialize_by_alias=True, validate_by_name=True)

    split: str
    threshold: float
    fine: SplitMetrics
    val: SplitMetrics
    class_ids: list[str]
    levels: dict[str, LevelReport]
    per_class_thresholds: list[float]
    """One threshold per class, each the one that maximises that class's F1 on val."""
    per_class: SplitMetrics
    """The split's fine-level metrics at `per_class_thresholds`."""
    at_half: SplitMetrics = Field(alias="at_0.5")
    """The split's fine-level metrics at 0.5, the official code's and the paper's threshold."""
    fixed_threshold: float | None = None
    """A threshold asked for besides val's (`--threshold`)."""
    at_fixed_threshold: SplitMetrics | None = None
    """The split's fine-level metrics at `fixed_threshold`."""
    reranked: RerankedReport | None = None
    """The same protocol on the scores with each image's top classes re-ranked
    (`eval.rerank_top_k`), its thresholds chosen on re-ranked val."""

    def as_json(self) -> dict:
        """The JSON document `--json` prints and `eval-<split>.json` holds."""
        return self.model_dump(mode="json")

    def summary(self) -> ScoreSummary:
        """The flat headline view of `score --json`, so any method's numbers line up key for
        key: the split's numbers unprefixed, val's prefixed `val_`."""
        return ScoreSummary(
            threshold=self.threshold,
            macro_f1=self.fine.macro_f1,
            micro_f1=self.fine.micro_f1,
            samples_f1=self.fine.samples_f1,
            mAP=self.fine.mAP,
            mAP_voc=self.fine.mAP_voc,
            val_macro_f1=self.val.macro_f1,
            val_micro_f1=self.val.micro_f1,
            val_samples_f1=self.val.samples_f1,
            val_mAP=self.val.mAP,
            val_mAP_voc=self.val.mAP_voc,
            per_class_thresholds=self.per_class_thresholds,
            per_class=self.per_class.f1s(),
            at_half=self.at_half.f1s(),
        )


class RerankedReport(BaseModel):
    """The report of the re-ranked scores, beside the plain one it is compared with."""

    model_config = ConfigDict(frozen=True, serialize_by_alias=True, validate_by_name=True)

    top_k: int
    """Each image's top `top_k` classes were re-ranked."""
    pooling: str
    """How each class's per-description similarities were pooled into its re-ranking score."""
    report: EvaluationReport


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
        per_class_thresholds=result.class_thresholds,
        per_class=result.test_per_class,
        at_half=result.test_at_half,
        fixed_threshold=fixed_threshold,
        at_fixed_threshold=(
            evaluate_split(*evaluated, fixed_threshold, subsets)
            if fixed_threshold is not None
            else None
        ),
    )


EvaluationReport.model_rebuild()


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


_METRIC_COLUMNS = ("macro F1", "micro F1", "samples F1", "mAP", "mAP VOC")


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def report_rows(report: EvaluationReport) -> list[tuple[str, SplitMetrics]]:
    """(row name, metrics) of the report's table, in order: the fine level under each threshold
    rule, the coarser levels at their global thresholds, then val at the global threshold."""
    rows = [
        ("fine", report.fine),
        ("fine @ per class", report.per_class),
        (f"fine @ {FIXED_THRESHOLD:g}", report.at_half),
    ]
    if report.at_fixed_threshold is not None and report.fixed_threshold != FIXED_THRESHOLD:
        rows.append((f"fine @ {report.fixed_threshold:g}", report.at_fixed_threshold))
    rows += [(name, level.metrics) for name, level in report.levels.items()]
    if report.split != "val":
        rows.append(("val", report.val))
    return rows


def score_classes(taxonomy: Path | None, count: int) -> tuple[list[str], Taxonomy | None]:
    """The class ids and taxonomy of score matrices with `count` columns: the taxonomy given,
    whose classes must be as many; else Intentonomy's for 28 classes (`score` is the Intentonomy
    protocol); else none, the classes named by their column."""
    if taxonomy is None and count == len(_intentonomy_ids()):
        taxonomy = INTENTONOMY_TAXONOMY
    if taxonomy is None:
        return [f"class_{index}" for index in range(count)], None
    loaded = load_taxonomy(taxonomy)
    if len(loaded.classes) != count:
        raise UserError(
            f"{taxonomy}: {len(loaded.classes)} classes, but the score matrices have {count}"
        )
    return [fine.id for fine in loaded.classes], loaded


def score_files(
    val_scores: Path,
    val_labels: Path,
    test_scores: Path,
    test_labels: Path,
    sigmoid: bool,
    taxonomy: Path | None,
) -> EvaluationReport:
    """The test report of saved score and label matrices (`intclip-train score`), every fault
    named with its file."""
    val_probabilities, val_truth = read_score_split(val_scores, val_labels, sigmoid)
    test_probabilities, test_truth = read_score_split(test_scores, test_labels, sigmoid)
    val_classes, test_classes = val_probabilities.shape[1], test_probabilities.shape[1]
    if val_classes != test_classes:
        raise UserError(
            f"{val_scores} has {val_classes} classes but {test_scores} has {test_classes}; "
            "val and test must score the same classes"
        )
    class_ids, classes = score_classes(taxonomy, val_classes)
    val, test = (val_truth, val_probabilities), (test_truth, test_probabilities)
    return build_report("test", val, test, class_ids, classes)


def _gain(value: float, plain: float) -> str:
    return f"{value - plain:+.2f}"


def reranked_rows(report: EvaluationReport) -> list[tuple[str, list[str]]]:
    """The re-ranked rows, each followed by its gain over the plain row it re-ranks."""
    if report.reranked is None:
        return []
    again, k = report.reranked.report, report.reranked.top_k
    rows = []
    for name, plain, reranked in (
        ("fine", report.fine, again.fine),
        ("fine @ per class", report.per_class, again.per_class),
    ):
        pairs = [
            (getattr(reranked, key), getattr(plain, key))
            for key in ("macro_f1", "micro_f1", "samples_f1", "mAP", "mAP_voc")
        ]
        rows.append((f"{name}, top {k} re-ranked", [_percent(new) for new, _ in pairs]))
        rows.append(("  gain", [_gain(new, old) for new, old in pairs]))
    return rows


def report_table(report: EvaluationReport) -> Table:
    table = Table(
        title=f"{report.split}: threshold {report.threshold:g}, chosen on val",
        caption="percent; F1s at the row's threshold rule (per-class thresholds chosen on val "
        "too), mAP and mAP VOC threshold-free",
    )
    for column in ("level", *_METRIC_COLUMNS):
        table.add_column(column, justify="left" if column == "level" else "right")
    rows = report_rows(report)
    last_fine = max(i for i, (name, _) in enumerate(rows) if name.startswith("fine"))
    for number, (name, metrics) in enumerate(rows):
        values = (metrics.macro_f1, metrics.micro_f1, metrics.samples_f1)
        table.add_row(name, *map(_percent, (*values, metrics.mAP, metrics.mAP_voc)))
        if number == last_fine:  # the re-ranked rows beside the plain ones
            for reranked_name, reranked in reranked_rows(report):
                table.add_row(reranked_name, *reranked)
    for subset, value in report.fine.subset_f1.items():
        table.add_row(f"  {subset} classes", _percent(value), "", "", "", "")
    return table


def per_class_table(report: EvaluationReport) -> Table:
    """Every class: F1 at the global and at its own threshold, AP both ways."""
    table = Table(title=f"{report.split}: per class", caption="percent; - : no positive")
    for column in ("class", "F1", "threshold", "F1 @ own", "AP", "AP VOC"):
        table.add_column(column, justify="left" if column == "class" else "right")
    columns = zip(
        report.class_ids,
        report.fine.per_class_f1,
        report.per_class_thresholds,
        report.per_class.per_class_f1,
        report.fine.per_class_ap,
        report.fine.per_class_ap_voc,
        strict=True,
    )
    for class_id, f1, threshold, own_f1, ap, ap_voc in columns:
        table.add_row(
            class_id, _percent(f1), f"{threshold:g}", *map(_percent, (own_f1, ap, ap_voc))
        )
    return table
