"""The machine a run measured: what BENCHMARKS.md must say for its numbers to mean anything."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path


@dataclass(frozen=True)
class Machine:
    cpu: str
    cores: int
    torch: str
    python: str
    gpu: str
    date: str
    load: tuple[float, float, float]  # 1, 5, 15 minute load averages when the run started

    def lines(self) -> list[str]:
        busy = self.load[0] > 0.5 * self.cores
        return [
            f"- CPU: {self.cpu}, {self.cores} cores",
            f"- GPU: {self.gpu}",
            f"- torch {self.torch}, Python {self.python}",
            f"- date: {self.date}",
            f"- load average at the start: {' / '.join(f'{v:.2f}' for v in self.load)}"
            + (" (the machine was shared and busy: absolute numbers are low)" if busy else ""),
        ]


def describe_machine() -> Machine:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return Machine(
        cpu=_cpu_model(),
        cores=os.cpu_count() or 1,
        torch=torch.__version__,
        python=platform.python_version(),
        gpu=gpu,
        date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        load=os.getloadavg(),
    )


def _cpu_model() -> str:
    """The model name Linux reports, else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
