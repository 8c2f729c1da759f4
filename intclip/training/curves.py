"""Learning curves from `metrics.csv`: train loss, each parameter group's learning rate, val
mAP and val macro F1 per epoch, for one run or several overlaid (`intclip-train plot`).

Drawn with matplotlib's object API (no pyplot, no display needed) and written as PNG and SVG
beside each other, atomically.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
from collections.abc import Sequence
from pathlib import Path

from intclip.training.epoch_metrics import LR_PREFIX
from intclip.training.run_dir import METRICS_FILE
from pipeline.common.errors import UserError
from pipeline.common.files import atomic_write_bytes

CURVES = "learning-curves"
"""The file stem of the plot a run writes into its directory (`.png` and `.svg`)."""
PANELS = (
    ("train_loss", "train loss (epoch mean)"),
    (LR_PREFIX, "learning rate (last step of the epoch)"),
    ("val_mAP", "val mAP (%)"),
    ("val_macro_f1", "val macro F1 (%), threshold chosen on val"),
)


def read_epochs(run_dir: Path) -> list[dict[str, float]]:
    """The rows of a run's metrics.csv as numbers (a blank cell is NaN)."""
    path = Path(run_dir) / METRICS_FILE
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as err:
        raise UserError(
            f"{path}: cannot read it ({err.strerror}); is it a run directory?"
        ) from None
    try:
        return [
            {key: float(value) if value else math.nan for key, value in r.items()} for r in rows
        ]
    except (TypeError, ValueError):
        raise UserError(f"{path}: not a metrics.csv of intclip-train run") from None


def _learning_rates(row: dict[str, float]) -> dict[str, float]:
    """Each group's lr; a run from before per-group columns has one `lr`."""
    found = {k.removeprefix(LR_PREFIX): v for k, v in row.items() if k.startswith(LR_PREFIX)}
    return found or ({"all groups": row["lr"]} if "lr" in row else {})


def plot_learning_curves(runs: Sequence[Path], out: Path) -> list[Path]:
    """Draw the runs' curves overlaid, one colour per run; write `out/learning-curves.png` and
    `.svg` (`out` a directory), or `out` and its `.svg` twin (`out` a `.png` file)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = {Path(run): read_epochs(run) for run in runs}
    figure = Figure(figsize=(11, 7.5), layout="constrained")
    axes = figure.subplots(2, 2).flatten()
    colours = [f"C{i % 10}" for i in range(len(epochs))]
    for (key, title), ax in zip(PANELS, axes, strict=True):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        for (run, rows), colour in zip(epochs.items(), colours, strict=True):
            x = [row["epoch"] for row in rows]
            if key == LR_PREFIX:
                groups = _learning_rates(rows[0]) if rows else {}
                styles = itertools.cycle(("-", "--", ":", "-."))
                for number, group in enumerate(groups):
                    # one run: a colour per group; several: the run's colour, a dash per group
                    one = len(epochs) == 1
                    y = [_learning_rates(row).get(group, math.nan) for row in rows]
                    ax.plot(
                        x, y, "-" if one else next(styles), color=f"C{number}" if one else colour,
                        marker=".", label=group if one else f"{run.name}: {group}",
                    )  # fmt: skip
                ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
                ax.legend(fontsize=7)
            else:
                ax.plot(x, [row[key] for row in rows], color=colour, marker=".", label=run.name)
        if key == "train_loss":
            ax.legend(fontsize=8)
    names = ", ".join(run.name for run in epochs)
    figure.suptitle(f"learning curves: {names}", fontsize=11)
    png = out / f"{CURVES}.png" if out.suffix.lower() != ".png" else out
    written = []
    for path in (png, png.with_suffix(".svg")):
        buffer = io.BytesIO()
        figure.savefig(buffer, format=path.suffix[1:], dpi=110, metadata=_NO_DATE[path.suffix])
        atomic_write_bytes(path, buffer.getvalue())
        written.append(path)
    return written


_NO_DATE = {".png": {}, ".svg": {"Date": None}}  # an SVG made twice from one run is the same
