"""`results.csv`: one row per evaluation, next to the runs, to compare them at a glance.

Each `eval`, `zeroshot` and `score --name` appends its headline numbers under all three
threshold rules (`eval` and `zeroshot` with re-ranking a second row, of the re-ranked scores);
`run --seeds` appends the mean and the standard deviation over its seeds. The table is rewritten
through a temporary file, so a reader never sees half a row; a damaged table is refused rather
than silently replaced, and a table written before the newer columns existed gains them, empty,
on its next row. Reading and rewriting happen under a lock (`results.csv.lock` beside it,
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
FIRST_COLUMNS = (
    "run",
    "split",
    "threshold",
    "macro_f1",
    "micro_f1",
    "samples_f1",
    "mAP",
    "config_hash",
)
"""The columns of the first tables; a table of just these gains the others."""
RESULT_COLUMNS = (
    *FIRST_COLUMNS,
    "mAP_voc",
    "per_class_macro_f1",
    "per_class_micro_f1",
    "per_class_samples_f1",
    "at_0.5_macro_f1",
    "at_0.5_micro_f1",
    "at_0.5_samples_f1",
    "statistic",
    "seeds",
)
"""The F1s without a prefix are at the global threshold chosen on val; `per_class_` at the
per-class thresholds chosen on val; `at_0.5_` at 0.5. `statistic` is empty for one evaluation,
`mean` or `std` for the summary of `run --seeds`, whose seeds `seeds` lists."""
METRIC_COLUMNS = tuple(
    column
    for column in RESULT_COLUMNS
    if column not in ("run", "split", "config_hash", "statistic", "seeds")
)
"""The numbers of a row: the threshold and the metrics under every threshold rule."""
_TEXT_COLUMNS = {"run": str, "split": str, "config_hash": str, "statistic": str, "seeds": str}


def config_hash(config: TrainConfig) -> str:
    """sha256 of the config's canonical JSON: equal configs, equal hash, on any machine."""
    return sha256_json(config.model_dump(mode="json"))


def results_path(report_dir: Path) -> Path:
    """The table sits beside the directories that hold the reports: runs/results.csv."""
    return Path(report_dir).parent / RESULTS_FILE


def report_row(name: str, report: EvaluationReport, config_digest: str = "") -> dict:
    """The row of one evaluation: `name` in the run column, the config's hash if it has one
    (`score` rows have none)."""
    return {
        "run": name,
        "split": report.split,
        "threshold": report.threshold,
        "macro_f1": report.fine.macro_f1,
        "micro_f1": report.fine.micro_f1,
        "samples_f1": report.fine.samples_f1,
        "mAP": report.fine.mAP,
        "config_hash": config_digest,
        "mAP_voc": report.fine.mAP_voc,
        "per_class_macro_f1": report.per_class.macro_f1,
        "per_class_micro_f1": report.per_class.micro_f1,
        "per_class_samples_f1": report.per_class.samples_f1,
        "at_0.5_macro_f1": report.at_half.macro_f1,
        "at_0.5_micro_f1": report.at_half.micro_f1,
        "at_0.5_samples_f1": report.at_half.samples_f1,
        "statistic": "",
        "seeds": "",
    }


def reranked_name(run: str, top_k: int, pooling: str) -> str:
    """The run column of a re-ranked row: the run's name and how its scores were re-ranked."""
    return f"{run} (top {top_k} re-ranked, {pooling})"


def append_result(report_dir: Path, report: EvaluationReport, config: TrainConfig) -> Path:
    """Add the report's row to the table of `report_dir`'s parent, and its re-ranked row after
    it when the report has one, so the two compare in the table as in the report; return the
    table's path."""
    path = results_path(report_dir)
    name, digest = Path(report_dir).name, config_hash(config)
    rows = [report_row(name, report, digest)]
    if report.reranked is not None:
        again = report.reranked
        rows.append(
            report_row(reranked_name(name, again.top_k, again.pooling), again.report, digest)
        )
    append_rows(path, rows)
    return path


def append_rows(path: Path, rows: list[dict]) -> None:
    """Add `rows` (keyed by `RESULT_COLUMNS`) to the table at `path`, created if missing, under
    the table's lock: the read, the new rows and the rewrite happen as one."""
    lock = FileLock(path.with_name(path.name + LOCK_SUFFIX))
    try:
        with lock.acquire(timeout=LOCK_WAIT_S):
            existing, new = read_results(path), pd.DataFrame(rows, columns=list(RESULT_COLUMNS))
            table = new if existing.empty else pd.concat([existing, new], ignore_index=True)
            buffer = io.StringIO()
            table.to_csv(buffer, index=False, lineterminator="\n")
            atomic_write_text(path, buffer.getvalue())
    except Timeout:
        raise UserError(
            f"{lock.lock_file}: held by another evaluation for over {LOCK_WAIT_S:g} s; the rows "
            f"of {', '.join(str(row['run']) for row in rows)} were not added to {path}"
        ) from None
    except OSError as err:  # the lock file cannot be made: a read-only folder
        raise UserError(
            f"{path.with_name(path.name + LOCK_SUFFIX)}: cannot write ({err.strerror})"
        ) from None


def read_results(path: Path) -> pd.DataFrame:
    """The table as written so far (empty when there is none), or one line saying what is wrong."""
    if not path.exists():
        return pd.DataFrame(columns=list(RESULT_COLUMNS))
    try:
        table = pd.read_csv(path, dtype=_TEXT_COLUMNS, keep_default_na=False, na_values=[""])
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise UserError(f"{path}: not a readable results table ({reason}); move it away") from None
    if tuple(table.columns) == FIRST_COLUMNS:
        table = table.reindex(columns=list(RESULT_COLUMNS))
    if tuple(table.columns) != RESULT_COLUMNS:
        raise UserError(
            f"{path}: columns {', '.join(map(str, table.columns))} are not those of a results "
            f"table ({', '.join(RESULT_COLUMNS)}); move it away"
        )
    return table
