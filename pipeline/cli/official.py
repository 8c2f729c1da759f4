"""`intclip-prompts import-official`: the official class sentences, from the user's checkout."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from pipeline.common.errors import EXIT_BAD_INPUT, UserError
from pipeline.descriptions.format import read_descriptions, write_descriptions
from pipeline.descriptions.official import (
    OFFICIAL_REPOSITORY,
    OFFICIAL_SOURCE,
    official_document,
    official_output,
    read_official_sentences,
)
from pipeline.descriptions.taxonomy import load_taxonomy

app = typer.Typer()
stdout = Console(highlight=False, soft_wrap=True)


@app.command("import-official")
def import_official(
    source: Annotated[
        Path,
        typer.Option(
            "--from",
            help=f"A checkout of {OFFICIAL_REPOSITORY}, or its {OFFICIAL_SOURCE.as_posix()}.",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            help="Output JSON \\[default: <taxonomy dir>/<name>.official.descriptions.json]."
        ),
    ] = None,
    taxonomy: Annotated[
        Path, typer.Option(help="Taxonomy whose classes, in label order, the sentences describe.")
    ] = Path("prompts/intentonomy.yaml"),
) -> None:
    """Read the official code's class sentences (parsed, never run) into a descriptions file,
    one sentence per class, for the official recipe's prompts; git ignores the file."""
    tree = load_taxonomy(taxonomy)
    out = out or official_output(tree)
    if out.exists() and read_descriptions(out).generator.imported is None:
        raise UserError(
            f"{out} holds descriptions that were not imported: pass another --out",
            EXIT_BAD_INPUT,
        )
    official = read_official_sentences(source)
    document = official_document(official, tree)
    commit = f"commit {official.commit}" if official.commit else "no git commit found"
    wrote = "wrote" if write_descriptions(out, document) else "unchanged:"
    stdout.print(
        f"{wrote} {out}: {len(document.classes)} class sentences from {official.source} "
        f"(sha256 {official.sha256}, {commit})",
        markup=False,
    )
