"""`intclip-train`: one typer app whose commands sit side by side, one function each.

`score` applies the Intentonomy evaluation protocol to any model's saved score matrices, so
methods trained elsewhere are compared under exactly the same threshold rule.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from rich.console import Console

from intclip.acquisition.settings import DownloadSettings, download_settings
from pipeline.common.collector import imports_first, tensor_command, tensor_command_checked
from pipeline.common.console import VersionOption, finite, run_app, stderr
from pipeline.common.errors import UserError
from pipeline.common.files import stable_json

if TYPE_CHECKING:
    from intclip.evaluation.seeds import SeedSummary
    from intclip.metrics.report import EvaluationReport

# torch, numpy and scikit-learn are imported inside the commands that use them, so that
# `--help` starts at once.

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)


@app.callback()
def _root(version: VersionOption = None) -> None:
    """Train, evaluate and score multi-label visual intent models."""


def _warn_missing_classes(labels_path: Path, classes: list[int]) -> None:
    if classes:
        stderr.print(
            f"warning: {labels_path}: classes {', '.join(map(str, classes))} have no positive "
            "label; they count as F1 0 in macro F1 and are left out of mAP",
            markup=False,
        )


@app.command()
@imports_first("numpy", "sklearn.metrics")
def score(
    val_scores: Path | None = typer.Option(
        None, "--val-scores", help="val scores, .npy (images x classes)", show_default=False
    ),
    val_labels: Path | None = typer.Option(
        None, "--val-labels", help="val 0/1 labels, .npy, same shape", show_default=False
    ),
    test_scores: Path | None = typer.Option(
        None, "--test-scores", help="test scores, .npy", show_default=False
    ),
    test_labels: Path | None = typer.Option(
        None, "--test-labels", help="test 0/1 labels, .npy", show_default=False
    ),
    seeds: Path | None = typer.Option(
        None,
        "--seeds",
        metavar="GROUP_DIR",
        help="Instead of the four files: the matrices `eval` saved in every seed run of this"
        " group (run --seeds), summarised over the seeds.",
        show_default=False,
    ),
    sigmoid: bool = typer.Option(False, "--sigmoid", help="the scores are logits: apply a sigmoid"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of tables"),
    taxonomy: Path | None = typer.Option(
        None,
        "--taxonomy",
        help="The taxonomy of the classes, in label order: its levels and ids are reported."
        " Default: Intentonomy's for 28 classes, none otherwise.",
        show_default=False,
    ),
    name: str | None = typer.Option(
        None,
        "--name",
        help="Append a row named NAME (with --seeds: its mean and std rows) to --results.",
        show_default=False,
    ),
    results: Path = typer.Option(
        Path("results.csv"), "--results", help="The results table --name appends to."
    ),
) -> None:
    """Score saved score matrices under the Intentonomy protocol, with eval's report.

    The threshold (0.05 to 0.95, step 0.05) that maximises val macro F1 is applied to test;
    so are the per-class thresholds that maximise each class's val F1; 0.5 is reported too.
    Scores must be probabilities in [0, 1], or logits with --sigmoid. Values are in percent.
    """
    from intclip.evaluation.results_table import append_rows, read_results, report_row
    from intclip.metrics.report import score_files

    files = {
        "val_scores": val_scores,
        "val_labels": val_labels,
        "test_scores": test_scores,
        "test_labels": test_labels,
    }
    given = [f"--{key.replace('_', '-')}" for key, path in files.items() if path is not None]
    if len(given) != (0 if seeds is not None else 4):
        raise UserError(
            "give --val-scores, --val-labels, --test-scores and --test-labels, or --seeds"
        )
    if name is not None:
        read_results(results)  # a damaged table stops us before, not after, scoring
    if seeds is not None:
        _score_seeds(seeds, sigmoid, taxonomy, name, results, as_json)
        return
    report = score_files(**files, sigmoid=sigmoid, taxonomy=taxonomy)
    _warn_missing_classes(val_labels, report.val.classes_without_positives)
    _warn_missing_classes(test_labels, report.fine.classes_without_positives)
    if name is not None:
        append_rows(results, [report_row(name, report)])
    if as_json:
        typer.echo(stable_json(report.summary().model_dump()), nl=False)
    else:
        _print_tables(report)


def _score_seeds(
    group: Path,
    sigmoid: bool,
    taxonomy: Path | None,
    name: str | None,
    results: Path,
    as_json: bool,
) -> None:
    """`score --seeds GROUP`: each seed's saved matrices scored, then summarised."""
    from intclip.evaluation.results_table import append_rows
    from intclip.evaluation.seeds import group_matrices, summarize, summary_rows
    from intclip.metrics.report import score_files

    recorded, files = group_matrices(group)
    reports = [score_files(**found, sigmoid=sigmoid, taxonomy=taxonomy) for found in files]
    summary = summarize(recorded.seeds, reports)
    if name is not None:
        append_rows(results, summary_rows(name, summary))
    _show_summary(group, summary, as_json)


RunOption = Annotated[
    Path,
    typer.Option(
        "--run",
        "--run-dir",
        help="A run directory of intclip-train run (--run-dir under torchrun, whose own"
        " --run-path option makes --run ambiguous).",
    ),
]
SplitOption = Annotated[
    Literal["val", "test"], typer.Option(help="Report on val, or on test at val's threshold.")
]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu, cuda, ...")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the JSON report.")]
ConfigOption = Annotated[Path, typer.Option("--config", help="Training config YAML.")]
PretrainedOption = Annotated[
    Path | None,
    typer.Option(
        "--pretrained",
        help="The CLIP weights file the run was trained on, where it lies on this machine;"
        " refused unless its sha256 is the one the run recorded.",
        show_default=False,
    ),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config key, e.g. --set optim.lr=0.01 (repeatable)."),
]


def _existing(path: Path | None, what: str, directory: bool = False) -> None:
    """Refuse a path argument that names nothing, before any heavy import."""
    if path is not None and not (path.is_dir() if directory else path.exists()):
        raise UserError(f"{path}: {what} not found")


def _config_exists(config: Path | None = None, **_: object) -> None:
    _existing(config, "config file")


def _run_dir_exists(run_dir: Path, **_: object) -> None:
    _existing(run_dir, "run directory", directory=True)


@app.command("check-data")
@tensor_command_checked(_config_exists)
def check_data(
    config: ConfigOption,
    overrides: SetOption = None,
    decode: Annotated[
        bool, typer.Option(help="Decode every image to find corrupt and truncated files.")
    ] = True,
) -> None:
    """Preflight the data: missing, unreadable, corrupt or truncated images, paths outside the
    image root, labels out of range, duplicates and images with no label (exit 2 if any)."""
    from intclip.data.check import check_index, summarize
    from intclip.data.dataset import SPLITS, load_split, width_mismatch
    from intclip.training.config import load_config

    settings = load_config(config, overrides)
    splits = {split: load_split(settings.data, split) for split in SPLITS}
    indexes = {split: index for split, index in splits.items() if index is not None}
    widest = max(indexes.values(), key=lambda index: index.label_width)
    if widest.label_width != settings.data.num_classes:
        raise width_mismatch(
            widest.source,
            widest.label_width,
            "the highest label + 1, over every split",
            settings.data.num_classes,
        )
    total = 0
    for split, index in indexes.items():
        problems = check_index(index, decode=decode)
        for problem in problems:
            stderr.print(str(problem), markup=False)
        verdict = summarize(problems) or "ok"
        Console().print(f"{split}: {len(index)} entries, {verdict}", markup=False)
        total += len(problems)
    if total:
        raise UserError(
            f"{total} bad entries (see above); fix them, or train with --skip-bad to leave them out"
        )


_DOWNLOAD = DownloadSettings.model_fields


def _setting(name: str, flag: str, **extra: object) -> typer.models.OptionInfo:
    return typer.Option(flag, help=str(_DOWNLOAD[name].description).capitalize() + ".", **extra)


@app.command()
def download(
    annotations: Annotated[
        list[Path],
        typer.Option(
            "--annotations",
            help="Annotation file: official Intentonomy JSON, or a manifest (.csv/.jsonl) with a"
            " url column; more may follow it.",
            show_default=False,
        ),
    ],
    image_root: Annotated[
        Path, typer.Option("--image-root", help="Where images go: <image-root>/<filename>.")
    ],
    more_annotations: Annotated[
        list[Path] | None,
        typer.Argument(metavar="[F ...]", help="More annotation files.", show_default=False),
    ] = None,
    concurrency: Annotated[int, _setting("concurrency", "--concurrency")] = _DOWNLOAD[
        "concurrency"
    ].default,
    timeout: Annotated[float, _setting("timeout", "--timeout")] = _DOWNLOAD["timeout"].default,
    deadline: Annotated[float, _setting("deadline", "--deadline")] = _DOWNLOAD["deadline"].default,
    max_attempts: Annotated[int, _setting("max_attempts", "--max-attempts")] = _DOWNLOAD[
        "max_attempts"
    ].default,
    rate: Annotated[float, _setting("rate", "--rate")] = _DOWNLOAD["rate"].default,
    max_bytes: Annotated[int, _setting("max_bytes", "--max-bytes")] = _DOWNLOAD[
        "max_bytes"
    ].default,
    resize_short_side: Annotated[
        int | None, _setting("resize_short_side", "--resize-short-side", show_default=False)
    ] = None,
    only_missing: Annotated[bool, _setting("only_missing", "--only-missing")] = False,
    report: Annotated[
        Path | None,
        typer.Option(
            help="JSON report; default <image-root>/download-report.json.", show_default=False
        ),
    ] = None,
) -> None:
    """Fetch the images of annotation files from their URLs, resumably: present images are
    skipped, failures are retried politely, then listed in a JSON report (exit 1 if any)."""
    from intclip.cli.download import run_download

    settings = download_settings(
        concurrency=concurrency,
        timeout=timeout,
        deadline=deadline,
        max_attempts=max_attempts,
        rate=rate,
        max_bytes=max_bytes,
        resize_short_side=resize_short_side,
        only_missing=only_missing,
    )
    files = [*annotations, *(more_annotations or [])]
    run_download(files, image_root, settings, report, typer.echo)


@app.command()
def prepare(
    images: Annotated[
        Path, typer.Option("--images", help="The folder of the original images (an image root).")
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Where the smaller copies go, same relative paths.")
    ],
    resize_short_side: Annotated[
        int,
        typer.Option(
            "--resize-short-side",
            min=1,
            help="Shorter side of the stored images (never enlarged; Lanczos, JPEG quality 90)."
            " At least crop size * sqrt(4 / (3 * crop scale min)), e.g. 366 for 224 and 0.5:"
            " then every RandomResizedCrop still spans the crop size, so no crop is enlarged.",
        ),
    ],
    workers: Annotated[
        int | None,
        typer.Option(min=1, help="Images resized at once; default: the machine's cores."),
    ] = None,
    crop_size: Annotated[
        int, typer.Option(min=1, help="The training crop, the model's image size.")
    ] = 224,
    crop_scale_min: Annotated[
        float | None,
        typer.Option(
            show_default=False,
            callback=finite,
            help="The lower end of augment.crop_scale, in (0, 1]; default: its default.",
        ),
    ] = None,
) -> None:
    """Store the images of a folder smaller, once, so that training decodes small files:
    resumable (up-to-date copies are skipped), recorded in <out>/prepare.json, and refused
    when the short side would let a training crop be enlarged. Point data.image_root at --out."""
    from intclip.acquisition.prepare import PrepareSettings, run_prepare
    from intclip.data.shrink import DEFAULT_CROP_SCALE_MIN

    settings = PrepareSettings(
        source=str(images.resolve()),
        resize_short_side=resize_short_side,
        crop_size=crop_size,
        crop_scale_min=DEFAULT_CROP_SCALE_MIN if crop_scale_min is None else crop_scale_min,
    )
    run_prepare(images, out, settings, workers or os.cpu_count() or 1, typer.echo)


def _run_arguments(
    config: Path | None = None,
    overrides: list[str] | None = None,
    resume: Path | None = None,
    init_from: Path | None = None,
    seeds: str | None = None,
    stop_after: int | None = None,
    **_: object,
) -> None:
    """`run`'s options checked before torch is imported, so a mistake is told at once."""
    if (config is None) == (resume is None):
        raise UserError("give --config F for a new run, or --resume RUN_DIR to continue one")
    if resume is not None and init_from is not None:
        raise UserError(
            "--init-from starts a new run from trained weights and --resume continues a run:"
            " give one of them"
        )
    if resume is not None and overrides:
        raise UserError("--set cannot change a run being resumed: it would no longer be exact")
    if seeds is not None and (resume is not None or stop_after is not None):
        raise UserError(
            "--seeds trains and evaluates whole runs: rerun it with the same run_name to "
            "continue a group, without --resume or --stop-after"
        )
    _config_exists(config)
    if resume is not None and not (resume / "last.pt").is_file():
        raise UserError(f"{resume}: no last.pt to resume from")


@app.command()
@tensor_command_checked(_run_arguments)
def run(
    config: Annotated[
        Path | None, typer.Option("--config", help="Training config YAML.", show_default=False)
    ] = None,
    overrides: SetOption = None,
    resume: Annotated[
        Path | None,
        typer.Option(help="Continue this run directory exactly where it stopped."),
    ] = None,
    skip_bad: Annotated[
        bool, typer.Option("--skip-bad", help="Leave out bad entries instead of stopping.")
    ] = False,
    stop_after: Annotated[
        int | None,
        typer.Option(min=1, help="Stop once this many epochs are done; --resume continues."),
    ] = None,
    init_from: Annotated[
        Path | None,
        typer.Option(
            "--init-from",
            metavar="RUN_DIR|F.safetensors",
            show_default=False,
            help="Start from the trained weights of a run (its best checkpoint) or of a"
            " checkpoint file, with a fresh optimiser and schedule (sets init_from.path).",
        ),
    ] = None,
    seeds: Annotated[
        str | None,
        typer.Option(
            "--seeds",
            metavar="S,S,...",
            show_default=False,
            help="Train one run per seed (e.g. 0,1,2,3,4) in a group directory, evaluate each"
            " on test and write the mean and std of every metric (seeds.json, results.csv).",
        ),
    ] = None,
) -> None:
    """Train the semantic branch, aggregation and head; choose the best epoch on val only.

    Under `torchrun --nproc_per_node N` the same command trains with DistributedDataParallel.
    Everything the run prints is also written to train.log in its run directory, with the
    time; run.json says what made it, README.md in it is its run card. Ctrl-C or SIGTERM
    stops it with one line giving the command that continues it.
    """
    from intclip.training.config import load_config
    from intclip.training.loop import train
    from intclip.training.run_dir import resumable_config
    from intclip.training.run_log import captured_output

    if init_from is not None:
        overrides = [*(overrides or []), f"init_from={{path: {json.dumps(str(init_from))}}}"]
    settings = load_config(config or resumable_config(resume), overrides)
    name = config.stem if config else resume.name
    if seeds is not None:
        from intclip.evaluation.seeds import parse_seeds, read_summary, run_seeds, summary_table

        chosen = parse_seeds(seeds)
        group = run_seeds(settings, name, chosen, skip_bad, settings.device, stderr.print)
        summary = read_summary(group)
        if os.environ.get("RANK", "0") == "0":
            if summary is not None and summary.metrics:
                Console(stderr=True).print(summary_table(group, summary))
            print(group)
        return
    with captured_output() as log:
        run_dir = train(settings, name, resume, skip_bad, stop_after, log)
        if os.environ.get("RANK", "0") == "0":  # under torchrun, one line from rank 0
            print(run_dir)  # one line, never wrapped: scripts read it


@app.command()
@tensor_command
def features(
    config: ConfigOption,
    overrides: SetOption = None,
    splits: Annotated[
        list[str] | None,
        typer.Option(
            "--split",
            help="A split to compute (repeatable); default: every split the config sets.",
            show_default=False,
        ),
    ] = None,
    manifest: Annotated[
        Path | None,
        typer.Option(
            "--manifest",
            help="The images of this manifest (.csv/.jsonl, as data.format: manifest, under"
            " data.image_root) instead of the splits.",
            show_default=False,
        ),
    ] = None,
    dense: Annotated[
        bool,
        typer.Option("--dense", help="Store the dense map too (model.features: dense needs it)."),
    ] = False,
    device: Annotated[
        str | None,
        typer.Option(help="auto, cpu, cuda, ...; default: the config's.", show_default=False),
    ] = None,
    shard_size: Annotated[
        int,
        typer.Option(
            "--shard-size", min=1, help="Images per shard, the most work a kill can lose."
        ),
    ] = 1024,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size",
            min=1,
            help="Images per batch; default: the config's optim.eval_batch_size.",
            show_default=False,
        ),
    ] = None,
    skip_bad: Annotated[
        bool, typer.Option("--skip-bad", help="Leave out bad entries instead of stopping.")
    ] = False,
) -> None:
    """Compute the frozen CLIP image features of a config's splits once, into the cache.

    Keyed by the CLIP, the images (paths, sizes, modification times), the transform and the
    pooling: features already there are read, never computed again; an extraction killed
    half-way keeps its finished shards. Prints each cache file. Under `torchrun
    --nproc_per_node N` the processes share the shards and rank 0 merges them.
    """
    from intclip.cli.features import run_features
    from intclip.training.config import load_config

    settings = load_config(config, overrides)
    found = run_features(
        settings,
        splits or [],
        manifest,
        dense,
        device or settings.device,
        shard_size,
        batch_size,
        skip_bad,
    )
    for path in found:
        print(path)  # one line each, never wrapped: scripts read them


DescriptionsOption = Annotated[
    Path | None,
    typer.Option(
        "--descriptions",
        help="A descriptions file of intclip-prompts build; default: the config's"
        " clip.descriptions.",
        show_default=False,
    ),
]
ConfigDeviceOption = Annotated[
    str | None,
    typer.Option(help="auto, cpu, cuda, ...; default: the config's.", show_default=False),
]
SkipBadOption = Annotated[
    bool, typer.Option("--skip-bad", help="Leave out bad entries instead of stopping.")
]


def _descriptions_arguments(
    config: Path | None = None,
    descriptions: Path | None = None,
    controls: list[Path] | None = None,
    **_: object,
) -> None:
    _config_exists(config)
    for path in [descriptions, *(controls or [])]:
        _existing(path, "descriptions file")


@app.command("score-descriptions")
@tensor_command_checked(_descriptions_arguments)
def score_descriptions(
    config: ConfigOption,
    overrides: SetOption = None,
    descriptions: DescriptionsOption = None,
    controls: Annotated[
        list[Path] | None,
        typer.Option(
            "--control",
            help="A control descriptions file to compare with, e.g. the random words of"
            " intclip-prompts build --control random-words (repeatable).",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="The JSON report; default: <name>.description-scores.json beside the"
            " descriptions.",
            show_default=False,
        ),
    ] = None,
    device: ConfigDeviceOption = None,
    skip_bad: SkipBadOption = False,
    as_json: JsonOption = False,
) -> None:
    """Score every description alone on val, zero-shot: its AP for its class, its rank among
    the class's descriptions and its margin over the best other class's text; beside them the
    class embeddings, the class names and any control. Never reads test.

    Uses the config's CLIP and val images (their cached features, computed when missing).
    Writes the JSON report, prints the tables (or the JSON with --json).
    """
    from intclip.cli.descriptions import print_report, run_score
    from intclip.training.config import load_config

    settings = load_config(config, overrides)
    target, report = run_score(
        settings, descriptions, controls or [], out, device or settings.device, skip_bad
    )
    if as_json:
        typer.echo(stable_json(report.model_dump(mode="json")), nl=False)
    else:
        print_report(report)
    stderr.print(f"wrote {target}", markup=False)


@app.command("select-descriptions")
@tensor_command_checked(_descriptions_arguments)
def select_descriptions(
    config: ConfigOption,
    keep: Annotated[
        int,
        typer.Option(
            "--keep", min=1, help="Descriptions kept per class: those with the best val AP."
        ),
    ],
    overrides: SetOption = None,
    descriptions: DescriptionsOption = None,
    device: ConfigDeviceOption = None,
    skip_bad: SkipBadOption = False,
) -> None:
    """Keep each class's K candidate descriptions with the best zero-shot AP on val (ties to
    the earlier), rewriting the descriptions file: every candidate stays in it with its val AP
    and whether it was kept, with the features' cache key. Never reads test.

    Review the choice with git diff (or intclip-prompts diff), then embed and train. Choosing
    again reads the recorded candidates, so a different --keep needs no LLM.
    """
    from intclip.cli.descriptions import rows_table, run_select
    from intclip.training.config import load_config

    settings = load_config(config, overrides)
    source, report, chosen = run_select(
        settings, descriptions, keep, device or settings.device, skip_bad
    )
    Console().print(rows_table(report))
    before = sum(len(entry.answer) for entry in chosen.classes)
    stderr.print(
        f"{source}: kept {keep} of the candidates of each of {len(chosen.classes)} classes "
        f"({before} in all), chosen on {report.images} val images; review it with git diff",
        markup=False,
    )


@app.command("eval")
@tensor_command_checked(_run_dir_exists)
def evaluate(
    run_dir: RunOption,
    split: SplitOption = "test",
    device: DeviceOption = "auto",
    as_json: JsonOption = False,
    threshold: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            show_default=False,
            help="Also report the split at this fixed threshold, e.g. 0.5 as the official code"
            " and the paper do; the protocol's threshold is still chosen on val.",
        ),
    ] = None,
    pretrained: PretrainedOption = None,
    rerank_top_k: Annotated[
        int | None,
        typer.Option(
            "--rerank-top-k",
            min=1,
            show_default=False,
            help="Also report the scores with each image's top K classes re-ranked by their"
            " zero-shot similarity with the class's descriptions, with the gain; default: the"
            " run's eval.rerank_top_k.",
        ),
    ] = None,
) -> None:
    """Evaluate a run's best checkpoint under the Intentonomy protocol.

    Says what made the run (its run.json), writes eval-<split>.json, the per-class chart
    eval-<split>-per-class.png (and .svg) and the <split>_scores.npy and <split>_labels.npy that
    `score` reads (for val too) in the run, adds a row to results.csv beside the run and
    rewrites the run card, README.md. Given the group directory of `run --seeds`, evaluates
    every seed's run and writes their summary (seeds.json and the mean and std rows).
    """
    from intclip.evaluation.evaluate import evaluate_run
    from intclip.evaluation.seeds import evaluate_group, read_summary
    from intclip.training.provenance import describe
    from intclip.training.run_bundle import read_manifest

    if read_summary(run_dir) is not None:
        summary = evaluate_group(run_dir, split, device, threshold, pretrained, rerank_top_k)
        _show_summary(run_dir, summary, as_json)
        return
    report = evaluate_run(run_dir, split, device, threshold, pretrained, rerank_top_k)
    manifest = read_manifest(run_dir)
    if report is not None and manifest is not None and manifest.invocations:
        for line in describe(manifest.invocations[0]):  # once it worked: an error stays one line
            stderr.print(line, markup=False)
    _show_report(report, as_json)


@app.command()
@tensor_command_checked(_config_exists)
def zeroshot(
    config: ConfigOption,
    overrides: SetOption = None,
    split: SplitOption = "test",
    device: DeviceOption = "auto",
    as_json: JsonOption = False,
    output_dir: Annotated[
        Path | None,
        typer.Option(
            "--output-dir",
            help="Where the report and matrices go; default <output_dir>/zeroshot-<config name>.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Evaluate plain CLIP with the cached class embeddings, nothing trained: the baseline.

    Leaves the same files as `eval`, and its row in results.csv beside them."""
    from intclip.evaluation.evaluate import evaluate_zero_shot
    from intclip.training.config import load_config

    settings = load_config(config, overrides)
    target = output_dir or settings.output_dir / f"zeroshot-{config.stem}"
    _show_report(evaluate_zero_shot(settings, split, device, target), as_json)


@app.command()
@tensor_command
def predict(
    run_dir: RunOption,
    images: Annotated[list[Path], typer.Argument(help="Image files or directories of images.")],
    output_format: Annotated[
        Literal["table", "json", "csv"], typer.Option("--format", help="Output format.")
    ] = "table",
    top: Annotated[int, typer.Option(min=1, help="Intents listed per level.")] = 5,
    device: DeviceOption = "auto",
    recursive: Annotated[
        bool, typer.Option(help="Also walk the subdirectories of directories named.")
    ] = True,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            help="Write one row per image to this .csv or .jsonl file, batch by batch, every"
            " class included; run again with it to continue where a run stopped.",
            show_default=False,
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Image-decoding processes; default: the cores, at most 8.",
            show_default=False,
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size",
            min=1,
            help="Images per batch; default: the run's eval_batch_size.",
            show_default=False,
        ),
    ] = None,
    pretrained: PretrainedOption = None,
) -> None:
    """The most probable intents of each image, marked when above the run's val-tuned
    threshold, rolled up to the middle and coarse levels of the taxonomy."""
    from intclip.cli.predict import predict_to_file, predict_to_stdout
    from intclip.evaluation.predict import FORMATTERS, Predictor, default_workers
    from intclip.evaluation.prediction_files import output_suffix
    from pipeline.clip.images import list_images

    if output is not None:
        output_suffix(output)
    found = list_images(images, recursive)
    predictor = Predictor(run_dir, device, pretrained)
    workers = default_workers() if workers is None else workers
    if output is not None:
        predict_to_file(predictor, found, output, workers, batch_size)
        return
    formatter = FORMATTERS[output_format]
    typer.echo(predict_to_stdout(predictor, found, top, workers, batch_size, formatter), nl=False)


@app.command()
def plot(
    runs: Annotated[
        list[Path],
        typer.Argument(metavar="RUN_DIR...", help="Run directories; several are overlaid."),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="The PNG to write, an SVG beside it; default: learning-curves.png in the run,"
            " or, for several runs, in the directory that holds the first.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Draw learning curves: train loss, each parameter group's learning rate, val mAP and val
    macro F1 per epoch, from metrics.csv; several runs are overlaid, one colour each."""
    for run_dir in runs:
        _existing(run_dir / "metrics.csv", "metrics.csv (is it a run directory?)")
    if out is not None and out.suffix.lower() != ".png":
        raise UserError(f"--out {out}: name a .png file (the .svg is written beside it)")
    from intclip.training.curves import plot_learning_curves

    target = out or (runs[0] if len(runs) == 1 else runs[0].parent)
    for path in plot_learning_curves(runs, target):
        typer.echo(path)


def _show_report(report: EvaluationReport | None, as_json: bool) -> None:
    """Rank 0 prints; other torchrun ranks get no report and print nothing."""
    if report is None:
        return
    if as_json:
        typer.echo(stable_json(report.as_json()), nl=False)
    else:
        _print_tables(report)


def _show_summary(group: Path, summary: SeedSummary | None, as_json: bool = False) -> None:
    """The summary over seeds (rank 0; other torchrun ranks print nothing)."""
    from intclip.evaluation.seeds import summary_table

    if summary is None:
        return
    if as_json:
        typer.echo(stable_json(summary.model_dump(mode="json")), nl=False)
    else:
        Console().print(summary_table(group, summary))


def _print_tables(report: EvaluationReport) -> None:
    """The tables of `eval`, `zeroshot` and `score`: the rows, then every class."""
    from intclip.metrics.report import per_class_table, report_table

    console = Console()
    console.print(report_table(report))
    console.print(per_class_table(report))


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point: user mistakes end as one `error:` line and exit code 2."""
    run_app(app, argv, "intclip-train")
