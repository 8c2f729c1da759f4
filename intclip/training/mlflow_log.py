"""MLflow: one of the trackers (see `trackers`), a local file store unless told otherwise.

Without `MLFLOW_TRACKING_URI` the run goes to a file store in the run's `mlruns/` (`mlflow ui
--backend-store-uri RUN_DIR/mlruns` shows it). MLflow 3.13 and later refuse a file store unless
`MLFLOW_ALLOW_FILE_STORE` is true; intclip sets it for the store it chose itself. A resumed
run continues the same MLflow run id (kept in run.json).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

MLFLOW_DIR = "mlruns"
PARAM_LIMIT = 6000
"""MLflow's longest parameter value, in characters."""
_STATUS = {"finished": "FINISHED", "stopped": "FINISHED", "interrupted": "KILLED"}


class MlflowLog:
    def __init__(
        self, run_dir: Path, config: dict[str, Any], project: str, run_id: str | None
    ) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
            uri = (run_dir / MLFLOW_DIR).absolute().as_uri()
        self.client: Any = MlflowClient(tracking_uri=uri)
        if run_id is None:
            found = self.client.get_experiment_by_name(project)
            experiment = found.experiment_id if found else self.client.create_experiment(project)
            run = self.client.create_run(experiment, run_name=run_dir.name)
            run_id = run.info.run_id
            params = [Param(key, str(value)[:PARAM_LIMIT]) for key, value in config.items()]
            for start in range(0, len(params), 100):  # MLflow takes 100 params a batch
                self.client.log_batch(run_id, params=params[start : start + 100])
        self.run_id: str = run_id

    def scalars(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def report(self, step: int, report: dict[str, Any]) -> None:
        numbers = {f"final/{k}": float(v) for k, v in report.items() if _is_number(v)}
        self.scalars(step, numbers)
        self.client.log_text(self.run_id, json.dumps(report, indent=1), "final_report.json")

    def flush(self) -> None:
        """Every call above is written at once."""

    def close(self, outcome: str) -> None:
        self.client.set_terminated(self.run_id, status=_STATUS.get(outcome, "FAILED"))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
