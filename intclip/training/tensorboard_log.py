"""TensorBoard event files in the run's `tensorboard/`: one of the trackers (see `trackers`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TENSORBOARD_DIR = "tensorboard"


class TensorBoardLog:
    run_id = None  # one directory, continued as it is by a resumed run

    def __init__(self, run_dir: Path, config: dict[str, Any], resumed: bool) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer: Any = SummaryWriter(str(run_dir / TENSORBOARD_DIR))
        if not resumed:
            self.writer.add_text("config", _as_code(config), 0)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def report(self, step: int, report: dict[str, Any]) -> None:
        self.writer.add_text("final_report", _as_code(report), step)
        self.writer.flush()

    def flush(self) -> None:
        self.writer.flush()

    def close(self, outcome: str) -> None:
        self.writer.close()


def _as_code(document: dict[str, Any]) -> str:
    """TensorBoard renders text as Markdown: indented JSON shows as a code block."""
    return "\n".join(f"    {line}" for line in json.dumps(document, indent=1).splitlines())
