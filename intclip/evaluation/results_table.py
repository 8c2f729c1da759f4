"""`results.csv`: one row per evaluation, next to the runs, to compare them at a glance.

Each `eval` and `zeroshot` appends its headline numbers; the table is rewritten through a
temporary file, so a reader never sees half a row, and a damaged table is refused rather than
silently replaced. Reading and rewriting happen under a lock (`results.csv.lock` beside it,
through `filelock`), so evaluations that finish at once each keep their row.
"""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
from filelock import FileLock, Timeout

from intclip.metrics.report import EvaluationReport
from intclip.training.config import TrainConfig
from pipeline.common.errors import UserError
from pipeline.common.files import atomic_write_text, sha256_json

RESULTS_FILE = "results.csv"
LOCK_SUFFIX = ".lock"
LOCK_WAIT_S = 120.0  # another evaluation writes one row; waiting longer means it is stuck
RESULT_COLUMNS = (
    "run",
    "split",
    "threshold",
    "macro_f1",
    "micro_f1",
    "samples_f1",
    "mAP",
    "config_hash",
)


def config_hash(config: TrainConfig) -> str:
    """sha256 of the config's canonical JSON: equal configs, equal hash, on any machine."""
    return sha256_json(config.model_dump(mode="json"))


def results_path(report_dir: Path) -> Path:
    """The table sits beside the directories that hold the reports: runs/results.csv."""
    return Path(report_dir).parent / RESULTS_FILE


def append_result(report_dir: Path, report: EvaluationReport, config: TrainConfig) -> Path:
    """Add the report's row to the table of `report_dir`'s parent; return the table's path."""
    path = results_path(report_dir)
    row = {
        "run": Path(report_dir).name,
        "split": report.split,
        "threshold": report.threshold,
        "macro_f1": report.fine.macro_f1,
        "micro_f1": report.fine.micro_f1,
        "samples_f1": report.fine.samples_f1,
        "mAP": report.fine.mAP,
        "config_hash": config_hash(config),
    }
    lock = FileLock(path.with_name(path.name + LOCK_SUFFIX))
    try:
        with lock.acquire(timeout=LOCK_WAIT_S):
            existing, new = read_results(path), pd.DataFrame([row], columns=list(RESULT_COLUMNS))
            table = new if existing.empty else pd.concat([existing, new], ignore_index=True)
            buffer = io.StringIO()
            table.to_csv(buffer, index=False, lineterminator="\n")
            atomic_write_text(path, buffer.getvalue())
    except Timeout:
        raise UserError(
            f"{lock.lock_file}: held by another evaluation for over {LOCK_WAIT_S:g} s; the row "
            f"of {row['run']} was not added to {path}"
        ) from None
    except OSError as err:  # the lock file cannot be made: a read-only folder
        raise UserError(
            f"{path.with_name(path.name + LOCK_SUFFIX)}: cannot write ({err.strerror})"
        ) from None
    return path


def read_results(path: Path) -> pd.DataFrame:
    """The table as written so far (empty when there is none), or one line saying what is wrong."""
    if not path.exists():
        return pd.DataFrame(columns=list(RESULT_COLUMNS))
    try:
        table = pd.read_csv(path, dtype={"run": str, "split": str, "config_hash": str})
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise UserError(f"{path}: not a readable results table ({reason}); move it away") from None
    if tuple(table.columns) != RESULT_COLUMNS:
        raise UserError(
            f"{path}: columns {', '.join(map(str, table.columns))} are not those of a results "
            f"table ({', '.join(RESULT_COLUMNS)}); move it away"
        )
    return table
