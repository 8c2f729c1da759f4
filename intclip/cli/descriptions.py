"""`intclip-train score-descriptions` and `select-descriptions`: descriptions measured on val,
and the best kept (`intclip.evaluation.description_scores`). Both read the val split alone."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from intclip.cli.predict import terminate_as_interrupt
from intclip.evaluation.description_scores import (
    DESCRIPTIONS_ROW,
    DescriptionScoresReport,
    check_classes,
    choose_descriptions,
    report_path,
    score_descriptions,
    val_images,
)
from intclip.runtime import distributed
from intclip.training.config import TrainConfig
from intclip.training.factory import build_components
from pipeline.common.errors import UserError
from pipeline.common.files import atomic_write_text, stable_json
from pipeline.descriptions.format import DescriptionsFile, read_descriptions, write_descriptions


def descriptions_of(config: TrainConfig, descriptions: Path | None) -> Path:
    """`--descriptions`, else the config's `clip.descriptions`."""
    found = descriptions or config.clip.descriptions
    if found is None:
        raise UserError(
            "the config names clip.embeddings, not a descriptions file: pass --descriptions"
        )
    return Path(found)


def _row_name(document: DescriptionsFile, path: Path, taken: set[str]) -> str:
    """A control's row: its kind (`random words`), with its seed when that kind repeats; any
    other descriptions file by its name."""
    if document.control is None:
        name = path.name
    else:
        name = document.control.kind.replace("-", " ")
        if name in taken:
            name = f"{name} (seed {document.control.seed})"
    if name in taken:
        raise UserError(f"--control {path}: given twice")
    return name


def measure(
    config: TrainConfig,
    descriptions: Path,
    controls: list[Path],
    device: str,
    skip_bad: bool,
) -> tuple[DescriptionsFile, DescriptionScoresReport]:
    """Score the descriptions and the controls on val, with the config's CLIP and images."""
    document = read_descriptions(descriptions)
    documents = {DESCRIPTIONS_ROW: (descriptions, document)}
    for control in controls:
        found = read_descriptions(control)
        documents[_row_name(found, control, set(documents))] = (control, found)
    context = distributed.Context(0, 1, distributed.resolve_device(device))
    components = build_components(config, context.device, with_class_text=False)
    ids = [fine.id for fine in components.taxonomy.classes] if components.taxonomy else None
    for path, found in documents.values():
        check_classes(found, path, config, ids)
    with terminate_as_interrupt():  # SIGTERM stops an extraction as Ctrl-C does
        images = val_images(config, components, str(context.device), skip_bad)
    return document, score_descriptions(documents, components.clip, images)


def run_score(
    config: TrainConfig,
    descriptions: Path | None,
    controls: list[Path],
    out: Path | None,
    device: str,
    skip_bad: bool,
) -> tuple[Path, DescriptionScoresReport]:
    """The report, written to `out` (default: beside the descriptions)."""
    source = descriptions_of(config, descriptions)
    _, report = measure(config, source, controls, device, skip_bad)
    target = out or report_path(source)
    atomic_write_text(target, stable_json(report.model_dump(mode="json")))
    return target, report


def run_select(
    config: TrainConfig, descriptions: Path | None, keep: int, device: str, skip_bad: bool
) -> tuple[Path, DescriptionScoresReport, DescriptionsFile]:
    """Keep each class's `keep` best candidates on val; the file rewritten in place."""
    source = descriptions_of(config, descriptions)
    document, report = measure(config, source, [], device, skip_bad)
    if document.control is not None:
        raise UserError(f"{source} is a {document.control.kind} control: choose from an LLM's")
    chosen = choose_descriptions(document, report, keep)
    write_descriptions(source, chosen)
    return source, report, chosen


def _ap(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def rows_table(report: DescriptionScoresReport) -> Table:
    """The text sources side by side: the question the report answers first."""
    table = Table(
        title=f"val: {report.images} images, zero-shot, each class's text alone",
        caption="percent; mAP: each class scored by its one text (the mean of its descriptions' "
        "embeddings, or its name); single: a description alone, averaged",
    )
    for column in ("texts", "mAP", "single description AP"):
        table.add_column(column, justify="left" if column == "texts" else "right")
    for row in report.rows:
        table.add_row(row.name, _ap(row.mAP), _ap(row.mean_description_ap))
    return table


def classes_table(report: DescriptionScoresReport) -> Table:
    names = [row.name for row in report.rows]
    table = Table(title="val: per class", caption="percent; - : no positive on val")
    for column in ("class", "positives", *names, "best other class"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for scores in report.classes:
        other = scores.best_other
        table.add_row(
            scores.id,
            str(scores.positives),
            *(_ap(scores.texts[name]) for name in names),
            "-" if other is None else f"{other.ap:.2f} {other.id}",
        )
    return table


def descriptions_table(report: DescriptionScoresReport) -> Table:
    table = Table(
        title="val: every description alone",
        caption="percent; margin: AP minus the best other class's on the same labels",
    )
    for column in ("class", "rank", "AP", "margin", "kept", "description"):
        table.add_column(column, justify="right" if column in ("rank", "AP", "margin") else "left")
    for scores in report.classes:
        for item in sorted(scores.descriptions, key=lambda d: d.rank or len(scores.descriptions)):
            kept = "" if item.kept is None else ("yes" if item.kept else "no")
            rank = "-" if item.rank is None else str(item.rank)
            table.add_row(scores.id, rank, _ap(item.ap), _ap(item.margin), kept, item.text)
    return table


def print_report(report: DescriptionScoresReport) -> None:
    console = Console()
    console.print(rows_table(report))
    console.print(classes_table(report))
    console.print(descriptions_table(report))
