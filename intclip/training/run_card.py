"""`README.md` of a run directory, for whoever opens it: what was trained on what, what made it
(from run.json), how its config differs from the shipped config it started from, its metrics
and its pictures. Written when a run ends and again after each `eval`, from the directory's own
files alone, so it never disagrees with them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml

from intclip.training.curves import read_epochs
from intclip.training.provenance import Invocation
from intclip.training.run_bundle import RUN_MANIFEST, RunManifest, read_manifest
from intclip.training.run_dir import BEST_SUMMARY, CONFIG_FILE, METRICS_FILE
from pipeline.common.files import atomic_write_text

RUN_CARD = "README.md"
EVAL_COLUMNS = ("macro_f1", "micro_f1", "samples_f1", "mAP")


def write_run_card(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    config = yaml.safe_load((run_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    manifest = read_manifest(run_dir)
    sections = [
        f"# Run `{run_dir.name}`",
        _what(config, run_dir),
        *_provenance(manifest),
        *_config_diff(manifest),
        *_epochs(run_dir),
        *_evaluations(run_dir),
        *_pictures(run_dir),
    ]
    path = run_dir / RUN_CARD
    atomic_write_text(path, "\n\n".join(sections) + "\n")
    return path


def _what(config: dict[str, Any], run_dir: Path) -> str:
    data, clip, model, optim = config["data"], config["clip"], config["model"], config["optim"]
    text = clip.get("embeddings") or clip.get("descriptions")
    return (
        f"IntCLIP on CLIP `{clip['name']}` (weights `{clip['pretrained']}`), class text "
        f"`{model.get('text', 'cached')}` from `{text}`, head `{model.get('head')}`, trained on "
        f"the {data['format']} data `{data['train']}` ({data['num_classes']} classes, images in "
        f"`{data['image_root']}`), best epoch chosen on `{data['val']}`: {optim['epochs']} "
        f"epochs of {optim['optimizer']} at lr {optim['lr']}, batch {optim['batch_size']}, "
        f"precision `{config.get('precision')}`, seed {config.get('seed')}. The full config is "
        f"[`{CONFIG_FILE}`]({CONFIG_FILE}); [`{RUN_MANIFEST}`]({RUN_MANIFEST}) records what "
        "made the run and the checksums of the inputs copied into `inputs/`."
    )


def _provenance(manifest: RunManifest | None) -> list[str]:
    if manifest is None or not manifest.invocations:
        return ["## Provenance", f"Not recorded: the run predates provenance in {RUN_MANIFEST}."]
    first: Invocation = manifest.invocations[0]
    made = first.software
    checkout = (
        f"git `{made.git_commit}`{' with uncommitted changes' if made.git_dirty else ''}"
        if made.git_commit
        else "an installed package (no checkout)"
    )
    facts = [
        ("intclip", f"{made.intclip}, {checkout}"),
        ("libraries", f"Python {made.python}, torch {made.torch}, torchvision "
         f"{made.torchvision}, open_clip {made.open_clip}, CUDA {made.cuda or 'none'}, "
         f"cuDNN {made.cudnn or 'none'}"),
    ]  # fmt: skip
    table = ["| | |", "|---|---|", *(f"| {name} | {value} |" for name, value in facts)]
    sessions = [
        "| started | ended | outcome | host | device | command (in directory) |",
        "|---|---|---|---|---|---|",
        *(
            f"| {i.started} | {i.ended or 'running'} | {i.outcome or ''} | {i.hostname} | "
            f"{i.device} | `{i.command}` (in `{i.cwd}`) |"
            for i in manifest.invocations
        ),
    ]
    return ["## Provenance", "\n".join(table), "\n".join(sessions)]


def _config_diff(manifest: RunManifest | None) -> list[str]:
    diff = manifest.config_diff if manifest is not None else None
    if diff is None:
        return ["## Config", "No shipped config could be compared (run.json has no diff)."]
    if not diff.changed:
        return ["## Config", f"Exactly the shipped `{diff.shipped}`."]
    rows = [f"| `{c.key}` | {_value(c.shipped)} | {_value(c.run)} |" for c in diff.changed]
    return [
        "## Config",
        f"Closest shipped config: `intclip/configs/{diff.shipped}`; {len(rows)} keys differ.",
        "\n".join(["| key | shipped | this run |", "|---|---|---|", *rows]),
    ]


def _value(value: Any) -> str:
    return "none" if value is None else f"`{json.dumps(value)}`"


def _epochs(run_dir: Path) -> list[str]:
    if not (run_dir / METRICS_FILE).is_file():
        return ["## Epochs", "No epoch has finished."]
    rows = read_epochs(run_dir)
    if not rows:
        return ["## Epochs", "No epoch has finished."]
    lrs = [key for key in rows[0] if key.startswith("lr")]
    columns = ["epoch", "train_loss", "val_mAP", "val_macro_f1", "val_threshold", *lrs]
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(_number(row.get(c, math.nan)) for c in columns) + " |" for row in rows),
    ]
    best = (
        json.loads((run_dir / BEST_SUMMARY).read_text())
        if (run_dir / BEST_SUMMARY).is_file()
        else None
    )
    said = (
        f"Best epoch (val mAP, `best.safetensors`): {int(best['epoch'])}, val mAP "
        f"{best['val_mAP']:.2f}, val macro F1 {best['val_macro_f1']:.2f}."
        if best
        else "No best epoch yet."
    )
    return ["## Epochs", said, "\n".join(lines)]


def _number(value: float) -> str:
    if math.isnan(value):
        return ""
    if value == int(value) and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.3g}" if abs(value) < 0.01 else f"{value:.4f}"


def _evaluations(run_dir: Path) -> list[str]:
    reports = []
    for path in sorted(run_dir.glob("eval-*.json")):
        try:
            reports.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    if not reports:
        return ["## Evaluation", "Not evaluated yet: `intclip-train eval --run RUN_DIR`."]
    lines = [
        "| split | threshold | " + " | ".join(EVAL_COLUMNS) + " |",
        "|---|---|---|---|---|---|",
    ]
    for report in reports:
        rows = [(f"{report['threshold']:g} (chosen on val)", report["fine"])]
        if report.get("at_fixed_threshold"):
            rows.append((f"{report['fixed_threshold']:g} (fixed)", report["at_fixed_threshold"]))
        for threshold, metrics in rows:
            values = " | ".join(f"{metrics[c]:.2f}" for c in EVAL_COLUMNS)
            lines.append(f"| {report['split']} | {threshold} | {values} |")
    return ["## Evaluation", "Percent; mAP is threshold-free.", "\n".join(lines)]


def _pictures(run_dir: Path) -> list[str]:
    pictures = sorted(run_dir.glob("*.png"))
    if not pictures:
        return []
    return ["## Plots", "\n\n".join(f"![{p.stem}]({p.name})" for p in pictures)]
