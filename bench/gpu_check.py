"""`python -m bench.gpu_check` (`make gpu-check`): the checks only a GPU can run, in one script.

On a machine with CUDA (under 8 minutes on one H100, no network): the CUDA-only tests
(`pytest -m cuda`), nvJPEG decoding against the CPU decoder, the `loader_vs_step` and
`image_pipeline` measures, one epoch of the official recipe with fp16 and with bf16 on a
random RN101 CLIP and synthetic 224 px images, a one-process nccl DDP run under torchrun, and
feature extraction throughput where `intclip-train features` exists. Anywhere else it is a dry
run: each CUDA part is skipped with one line saying so. Either way it prints a summary table
and writes one JSON report (`<out>/gpu-check.json`). docs/gpu-check.md says what each part
proves.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.common.files import atomic_write_text, stable_json
from testkit.paths import ROOT

BIN = Path(sys.executable).parent
PART_LIMIT_S = 240
"""No part may take longer: the whole check stays within a GPU lease of a few minutes."""
RECIPE = ROOT / "intclip" / "configs" / "intentonomy_rn101_official.yaml"
IMAGES = {"train": 512, "val": 128, "test": 64}
DECODE_TESTS = "tests/intclip/data/test_device_decode.py"
NVJPEG_TEST = f"{DECODE_TESTS}::test_nvjpeg_on_the_gpu_gives_the_cpu_decoders_tensors"


class Skip(Exception):
    """The part cannot run here; its message says why."""


@dataclass
class Part:
    name: str
    status: str = "skipped"  # passed, failed or skipped
    seconds: float = 0.0
    detail: str = ""
    figures: dict[str, float] = field(default_factory=dict)


class Check:
    """Runs parts in order, each bounded in time; a part's exception fails that part only."""

    def __init__(self, out: Path, cuda: bool) -> None:
        self.out, self.cuda, self.parts = out, cuda, []

    def require_cuda(self) -> None:
        if not self.cuda:
            raise Skip("needs CUDA, and torch.cuda.is_available() is False here")

    def part(self, name: str, needs_cuda: bool, run: Callable[[Part], None]) -> Part:
        part = Part(name)
        self.parts.append(part)
        started = time.perf_counter()
        try:
            if needs_cuda:
                self.require_cuda()
            print(f"== {name}", flush=True)
            run(part)
            part.status = "passed"
        except Skip as reason:
            part.detail = str(reason)
            print(f"skip {name}: {reason}", flush=True)
            return part
        except Exception as err:  # one failed part must not hide the others
            part.status, part.detail = "failed", " ".join(str(err).split())[-600:]
        part.seconds = round(time.perf_counter() - started, 1)
        print(f"   {part.status} in {part.seconds} s {part.detail}", flush=True)
        return part


def _command(arguments: Sequence[str | Path], env: dict[str, str] | None = None) -> str:
    """Run a command of this venv; its stdout, or an error with the end of its stderr."""
    done = subprocess.run(
        [str(a) for a in arguments], capture_output=True, text=True, env=env,
        timeout=PART_LIMIT_S, cwd=ROOT, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"exit {done.returncode}: {done.stderr[-500:]}")
    return done.stdout


def environment(part: Part) -> None:
    import torch

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    part.detail = (
        f"torch {torch.__version__}, CUDA {torch.version.cuda}, "
        f"cuDNN {torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}, "
        f"GPUs: {', '.join(gpus) or 'none'}, {os.cpu_count()} cores, {platform.node()}"
    )


def cuda_tests(part: Part) -> None:
    output = _command([BIN / "pytest", "-q", "-p", "no:xdist", "-m", "cuda", "-rs"])
    part.detail = output.strip().splitlines()[-1]


def nvjpeg(part: Part) -> None:
    output = _command([BIN / "pytest", "-q", "-p", "no:xdist", NVJPEG_TEST])
    part.detail = (
        "nvJPEG decodes within 2.0 mean absolute difference of the CPU decoder; "
        + (output.strip().splitlines()[-1])
    )


def measures(out: Path) -> Callable[[Part], None]:
    def run(part: Part) -> None:
        report = out / "BENCHMARKS-gpu.md"
        output = _command([BIN / "python", "-m", "bench", "--only", "loader_vs_step",
                           "--only", "image_pipeline", "--out", report])  # fmt: skip
        lines = [line.strip() for line in output.splitlines() if "ratio" in line]
        part.detail = f"{len(lines)} comparisons, in {report}"
        for line in lines:
            label, _, rest = line.partition(":")
            ratio = rest.rsplit("ratio ", 1)[-1].split()[0]
            part.figures[label] = float(ratio)

    return run


def workspace(out: Path) -> dict[str, str]:
    """Synthetic Intentonomy-format images (28 classes, 224 px) and random RN101 weights."""
    from intclip.data.synthetic import make_synthetic_intentonomy
    from testkit.tiny_clip import save_random_clip

    data = out / "data"
    if not (data / "synthetic_test.json").is_file():
        make_synthetic_intentonomy(data, 28, tuple(IMAGES.values()), image_size=224)
    weights = out / "rn101-random.pt"
    if not weights.is_file():
        save_random_clip(Path("RN101"), weights, seed=0)
    return {
        "data.image_root": str(data / "images"),
        **{f"data.{split}": str(data / f"synthetic_{split}.json") for split in IMAGES},
        "clip.pretrained": str(weights),
        "output_dir": str(out / "runs"),
        "device": "cuda",
        "data.num_workers": str(min(8, os.cpu_count() or 1)),
        "log.trackers": "[]",
    }


def recipe_epoch(out: Path, precision: str, launcher: Sequence[str] = ()) -> Callable[[Part], None]:
    """One epoch of the official recipe (its full schedule, `--stop-after 1`)."""

    def run(part: Part) -> None:
        settings = {**workspace(out), "precision": precision, "run_name": part.name}
        overrides = [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
        started = time.perf_counter()
        output = _command([*launcher, BIN / "intclip-train", "run", "--config", RECIPE,
                           *overrides, "--stop-after", "1"])  # fmt: skip
        run_dir = Path(output.strip().splitlines()[-1])
        with (run_dir / "metrics.csv").open() as handle:
            header, row = handle.readline().strip().split(","), handle.readline().strip().split(",")
        metrics = dict(zip(header, row, strict=False))
        part.figures = {
            "train_loss": float(metrics["train_loss"]),
            "val_mAP": float(metrics["val_mAP"]),
            "images_per_s": float(metrics["images_per_s"]),
            "seconds": round(time.perf_counter() - started, 1),
        }
        if not all(map(lambda v: v == v and abs(v) != float("inf"), part.figures.values())):
            raise RuntimeError(f"non-finite figures: {part.figures}")
        part.detail = f"{run_dir}"

    return run


def features(out: Path, check: Check) -> Callable[[Part], None]:
    def run(part: Part) -> None:
        there = subprocess.run([BIN / "intclip-train", "features", "--help"], capture_output=True,
                               check=False, timeout=60)  # fmt: skip
        if there.returncode != 0:
            raise Skip("intclip-train has no `features` command yet, so no cached features")
        check.require_cuda()
        settings = workspace(out)
        overrides = [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
        started = time.perf_counter()
        _command([BIN / "intclip-train", "features", "--config", RECIPE, *overrides])
        seconds = time.perf_counter() - started
        images = sum(IMAGES.values())
        part.figures = {"images_per_s": round(images / seconds, 1), "seconds": round(seconds, 1)}

    return run


def summary(parts: list[Part]) -> str:
    rows = ["| part | status | seconds | figures or reason |", "|---|---|---|---|"]
    for part in parts:
        said = ", ".join(f"{k} {v:g}" for k, v in part.figures.items()) or part.detail
        rows.append(f"| {part.name} | {part.status} | {part.seconds:g} | {said} |")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "cache" / "gpu-check",
                        help="Where the workspace, the runs and gpu-check.json go.")  # fmt: skip
    args = parser.parse_args(argv)
    import torch

    out = args.out.absolute()
    out.mkdir(parents=True, exist_ok=True)
    check = Check(out, torch.cuda.is_available())
    if not check.cuda:
        print("dry run: no CUDA device here, so every CUDA part is skipped", flush=True)
    torchrun = [BIN / "torchrun", "--standalone", "--nproc_per_node", "1"]
    check.part("environment", False, environment)
    check.part("cuda_tests", True, cuda_tests)
    check.part("nvjpeg_vs_cpu", True, nvjpeg)
    check.part("loader_vs_step_and_image_pipeline", True, measures(out))
    check.part("official_epoch_fp16", True, recipe_epoch(out, "fp16"))
    check.part("official_epoch_bf16", True, recipe_epoch(out, "bf16"))
    check.part("ddp_nccl_1_process", True, recipe_epoch(out, "bf16", torchrun))
    check.part("features_throughput", False, features(out, check))
    table = summary(check.parts)
    print(table)
    report = {
        "dry_run": not check.cuda,
        "parts": [asdict(part) for part in check.parts],
        "summary": table,
    }
    atomic_write_text(out / "gpu-check.json", stable_json(report))
    print(f"wrote {out / 'gpu-check.json'}")
    return 1 if any(part.status == "failed" for part in check.parts) else 0


if __name__ == "__main__":
    sys.exit(main())
