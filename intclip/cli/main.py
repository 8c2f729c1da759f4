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
from rich.table import Table

from intclip.acquisition.settings import DownloadSettings, download_settings
from pipeline.common.collector import imports_first, tensor_command
from pipeline.common.console import VersionOption, finite, run_app, stderr
from pipeline.common.errors import UserError
from pipeline.common.files import stable_json

if TYPE_CHECKING:
    from intclip.metrics.multilabel import ProtocolResult
    from intclip.metrics.report import EvaluationReport

# torch, numpy and scikit-learn are imported inside the commands that use them, so that
# `--help` starts at once.

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)

_TABLE_ROWS = {
    "macro F1": "macro_f1",
    "micro F1": "micro_f1",
    "samples F1": "samples_f1",
    "mAP": "mAP",
}


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


def _results_table(result: ProtocolResult) -> Table:
    table = Table(
        title="Intentonomy protocol", caption=f"threshold {result.threshold}, chosen on val"
    )
    table.add_column("metric (%)")
    table.add_column("val", justify="right")
    table.add_column("test", justify="right")
    for label, field in _TABLE_ROWS.items():
        table.add_row(
            label, f"{getattr(result.val, field):.2f}", f"{getattr(result.test, field):.2f}"
        )
    return table


@app.command()
@imports_first("numpy", "sklearn.metrics")
def score(
    val_scores: Path = typer.Option(
        ..., "--val-scores", help="val scores, .npy (images x classes)"
    ),
    val_labels: Path = typer.Option(..., "--val-labels", help="val 0/1 labels, .npy, same shape"),
    test_scores: Path = typer.Option(..., "--test-scores", help="test scores, .npy"),
    test_labels: Path = typer.Option(..., "--test-labels", help="test 0/1 labels, .npy"),
    sigmoid: bool = typer.Option(False, "--sigmoid", help="the scores are logits: apply a sigmoid"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
) -> None:
    """Score saved score matrices under the Intentonomy protocol.

    The threshold (0.05 to 0.95, step 0.05) that maximises val macro F1 is applied to test.
    Scores must be probabilities in [0, 1], or logits with --sigmoid. Values are in percent.
    """
    from intclip.metrics.multilabel import evaluate_protocol
    from intclip.metrics.score_inputs import read_score_split

    val_probabilities, val_truth = read_score_split(val_scores, val_labels, sigmoid)
    test_probabilities, test_truth = read_score_split(test_scores, test_labels, sigmoid)
    val_classes, test_classes = val_probabilities.shape[1], test_probabilities.shape[1]
    if val_classes != test_classes:
        raise UserError(
            f"{val_scores} has {val_classes} classes but {test_scores} has {test_classes}; "
            "val and test must score the same classes"
        )
    result = evaluate_protocol(val_truth, val_probabilities, test_truth, test_probabilities)
    _warn_missing_classes(val_labels, result.val.classes_without_positives)
    _warn_missing_classes(test_labels, result.test.classes_without_positives)
    if as_json:
        typer.echo(stable_json(result.summary().model_dump()), nl=False)
    else:
        Console().print(_results_table(result))


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


@app.command("check-data")
@tensor_command
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
    from intclip.data.dataset import SPLITS, load_split
    from intclip.training.config import load_config

    settings = load_config(config, overrides)
    indexes = {split: load_split(settings.data, split) for split in SPLITS}  # all read first
    total = 0
    for split, index in indexes.items():
        if index is None:
            continue
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


@app.command()
@tensor_command
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
) -> None:
    """Train the semantic branch, aggregation and head; choose the best epoch on val only.

    Under `torchrun --nproc_per_node N` the same command trains with DistributedDataParallel.
    Everything the run prints is also written to train.log in its run directory.
    """
    from intclip.training.config import load_config
    from intclip.training.loop import train
    from intclip.training.run_dir import resumable_config
    from intclip.training.run_log import captured_output

    if (config is None) == (resume is None):
        raise UserError("give --config F for a new run, or --resume RUN_DIR to continue one")
    if resume is not None and init_from is not None:
        raise UserError(
            "--init-from starts a new run from trained weights and --resume continues a run:"
            " give one of them"
        )
    if resume is not None and overrides:
        raise UserError("--set cannot change a run being resumed: it would no longer be exact")
    if init_from is not None:
        overrides = [*(overrides or []), f"init_from={{path: {json.dumps(str(init_from))}}}"]
    settings = load_config(config or resumable_config(resume), overrides)
    name = config.stem if config else resume.name
    with captured_output() as log:
        run_dir = train(settings, name, resume, skip_bad, stop_after, log)
        if os.environ.get("RANK", "0") == "0":  # under torchrun, one line from rank 0
            print(run_dir)  # one line, never wrapped: scripts read it


@app.command("eval")
@tensor_command
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
) -> None:
    """Evaluate a run's best checkpoint under the Intentonomy protocol.

    Writes eval-<split>.json, eval-<split>-per-class-f1.png and the <split>_scores.npy and
    <split>_labels.npy that `score` reads (for val too) in the run, and adds a row to
    results.csv beside the run.
    """
    from intclip.evaluation.evaluate import evaluate_run

    _show_report(evaluate_run(run_dir, split, device, threshold, pretrained), as_json)


@app.command()
@tensor_command
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


def _show_report(report: EvaluationReport | None, as_json: bool) -> None:
    """Rank 0 prints; other torchrun ranks get no report and print nothing."""
    from intclip.metrics.report import report_table

    if report is None:
        return
    if as_json:
        typer.echo(stable_json(report.model_dump(mode="json")), nl=False)
    else:
        Console().print(report_table(report))


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point: user mistakes end as one `error:` line and exit code 2."""
    run_app(app, argv, "intclip-train")
