"""The per-class chart of an evaluation: each class's F1 under every threshold rule of the report
(val's global threshold, each class's own val threshold, 0.5, and a fixed one when asked) beside
its AP, as PNG and SVG."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from intclip.metrics.report import EvaluationReport
from pipeline.common.files import atomic_write_bytes


def threshold_rows(report: EvaluationReport) -> dict[str, list[float]]:
    """Per-class F1 (%) of each threshold row the report has, named by its threshold."""
    rows = {
        f"F1 at {report.threshold:g} (chosen on val)": report.fine.per_class_f1,
        "F1 at each class's own val threshold": report.per_class.per_class_f1,
        "F1 at 0.5": report.at_half.per_class_f1,
    }
    if report.at_fixed_threshold is not None and report.fixed_threshold != 0.5:
        rows[f"F1 at {report.fixed_threshold:g} (fixed)"] = report.at_fixed_threshold.per_class_f1
    return rows


def per_class_chart(report: EvaluationReport, png: Path) -> list[Path]:
    """Write `png` and its `.svg` twin: per class, grouped F1 bars (one per threshold row) and
    an AP bar (none for a class without a positive, whose AP is undefined)."""
    from matplotlib.figure import Figure

    rows = threshold_rows(report)
    ap = np.array([np.nan if value is None else value for value in report.fine.per_class_ap])
    classes = report.class_ids
    y = np.arange(len(classes))
    figure = Figure(figsize=(11, 1.6 + 0.26 * len(classes)), layout="constrained")
    f1_axes, ap_axes = figure.subplots(1, 2, sharey=True)
    height = 0.8 / len(rows)
    for number, (name, values) in enumerate(rows.items()):
        offset = (number - (len(rows) - 1) / 2) * height
        f1_axes.barh(y + offset, values, height=height, label=name, color=f"C{number}")
    f1_axes.set_yticks(y, classes, fontsize=8)
    f1_axes.invert_yaxis()
    f1_axes.set_xlim(0, 100)
    f1_axes.set_xlabel("F1 (%)")
    f1_axes.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0, 1), ncols=2, frameon=False)
    ap_axes.barh(y, np.nan_to_num(ap), height=0.6, color="C2")
    for row in np.flatnonzero(np.isnan(ap)):
        ap_axes.text(1, row, "no positive", va="center", fontsize=7)
    ap_axes.set_xlim(0, 100)
    ap_axes.set_xlabel("AP (%)")
    for axes in (f1_axes, ap_axes):
        axes.grid(axis="x", alpha=0.3)
    figure.suptitle(
        f"per class on {report.split}: macro F1 {report.fine.macro_f1:.2f} at threshold "
        f"{report.threshold:g}, mAP {report.fine.mAP:.2f}",
        fontsize=11,
    )
    written = []
    for path, metadata in ((png, {}), (png.with_suffix(".svg"), {"Date": None})):
        buffer = io.BytesIO()
        figure.savefig(buffer, format=path.suffix[1:], dpi=110, metadata=metadata)
        atomic_write_bytes(path, buffer.getvalue())
        written.append(path)
    return written
