"""The official IntCLIP class sentences, read from a user's checkout of the official code.

The official code (github.com/yan9qu/IntCLIP) trains its prompts on one sentence per class,
written into `dataloaders/intenton.py` as the list `self.classnames`. That repository has no
licence, so intclip ships none of its text: `intclip-prompts import-official` reads the list from
the user's own checkout into a descriptions file, which stays out of git. The source is parsed
with `ast`, never imported or run, and the file records its sha256 and the checkout's commit.
"""

from __future__ import annotations

import ast
import hashlib
from dataclasses import dataclass
from pathlib import Path

from pipeline.common.errors import EXIT_BAD_INPUT, UserError
from pipeline.common.files import sha256_json
from pipeline.common.git import git_output
from pipeline.common.safe_load import read_text_file
from pipeline.descriptions.format import (
    SCHEMA_VERSION,
    ClassDescriptions,
    DescriptionsFile,
    GeneratorInfo,
    ImportedSource,
    TaxonomyRef,
)
from pipeline.descriptions.taxonomy import Taxonomy

OFFICIAL_REPOSITORY = "github.com/yan9qu/IntCLIP"
OFFICIAL_SOURCE = Path("dataloaders") / "intenton.py"
OFFICIAL_SUFFIX = ".official.descriptions.json"
"""The name of an imported file: `<taxonomy name>.official.descriptions.json`."""


@dataclass(frozen=True)
class OfficialSentences:
    """The sentences as the official prompt learner reads them, and where they came from."""

    sentences: tuple[str, ...]
    source: Path
    line: int
    sha256: str
    commit: str | None


def official_output(taxonomy: Taxonomy) -> Path:
    """The default output: `<taxonomy dir>/<name>.official.descriptions.json`."""
    return taxonomy.source.parent / f"{taxonomy.name}{OFFICIAL_SUFFIX}"


def import_hint(path: Path) -> str:
    """The command that makes a missing imported file, for the error that finds it missing."""
    out = "" if path.name == f"intentonomy{OFFICIAL_SUFFIX}" else f" --out {path}"
    return (
        "the official class sentences are not shipped (the official repository has no "
        "licence): import them from your checkout of the official code with `intclip-prompts "
        f"import-official --from <checkout of {OFFICIAL_REPOSITORY}>{out}`"
    )


def read_official_sentences(path: Path) -> OfficialSentences:
    """The last `self.classnames = [...]` list of the official dataloader (the one in force:
    the file first assigns the class names, then the sentences that replace them)."""
    path = Path(path)
    source = path / OFFICIAL_SOURCE if path.is_dir() else path
    text = read_text_file(source, "official dataloader")
    try:
        tree = ast.parse(text, filename=str(source))
    except SyntaxError as err:
        raise UserError(
            f"{source}:{err.lineno}: not Python source ({err.msg}): expected the official "
            f"{OFFICIAL_SOURCE}",
            EXIT_BAD_INPUT,
        ) from None
    except (ValueError, RecursionError, MemoryError) as err:
        raise UserError(f"{source}: cannot parse as Python ({err})", EXIT_BAD_INPUT) from None
    assignments = sorted(
        (node for node in ast.walk(tree) if _assigns_classnames(node)),
        key=lambda node: (node.lineno, node.col_offset),
    )
    if not assignments:
        raise UserError(
            f"{source}: no `self.classnames = [...]` assignment: expected the official "
            f"{OFFICIAL_SOURCE} of {OFFICIAL_REPOSITORY}",
            EXIT_BAD_INPUT,
        )
    last = assignments[-1]
    value = last.value
    if not isinstance(value, ast.List) or not all(
        isinstance(item, ast.Constant) and isinstance(item.value, str) for item in value.elts
    ):
        raise UserError(
            f"{source}:{last.lineno}: self.classnames is not a list of string literals",
            EXIT_BAD_INPUT,
        )
    sentences = tuple(_as_the_prompt_learner_reads(item.value) for item in value.elts)
    return OfficialSentences(
        sentences,
        source,
        last.lineno,
        hashlib.sha256(text.encode("utf-8")).hexdigest(),  # the bytes parsed, read once
        _checkout_commit(source),
    )


def _assigns_classnames(node: ast.AST) -> bool:
    return isinstance(node, ast.Assign) and any(
        isinstance(target, ast.Attribute)
        and target.attr == "classnames"
        and isinstance(target.value, ast.Name)
        and target.value.id == "self"
        for target in node.targets
    )


def _as_the_prompt_learner_reads(sentence: str) -> str:
    """models/dualcoop.py MLCPromptLearner reads every class name with underscores as spaces."""
    return sentence.replace("_", " ")


def _checkout_commit(source: Path) -> str | None:
    """The commit of the git checkout whose `dataloaders/intenton.py` this is; None for a file
    outside one (or without git). Nothing is written, fetched or run from the checkout."""
    root = source.resolve().parent.parent
    if source.resolve() != (root / OFFICIAL_SOURCE).resolve():
        return None
    output = git_output(root, "rev-parse", "--show-toplevel", "HEAD")
    if output is None:
        return None
    lines = output.split()
    if len(lines) != 2 or Path(lines[0]).resolve() != root:
        return None  # not a checkout, or the file sits in another repository
    return lines[1]


def official_document(official: OfficialSentences, taxonomy: Taxonomy) -> DescriptionsFile:
    """One description per class, the i-th sentence for the i-th class in label order, as the
    official code indexes its label vectors."""
    classes = taxonomy.classes
    if len(official.sentences) != len(classes):
        raise UserError(
            f"{official.source}:{official.line}: self.classnames holds "
            f"{len(official.sentences)} sentences, but taxonomy '{taxonomy.name}' "
            f"({taxonomy.source}) has {len(classes)} classes",
            EXIT_BAD_INPUT,
        )
    for index, sentence in enumerate(official.sentences):
        if not sentence.strip():
            raise UserError(
                f"{official.source}:{official.line}: sentence {index} (for class "
                f"'{classes[index].id}') is empty",
                EXIT_BAD_INPUT,
            )
    entries = [
        ClassDescriptions(
            label=fine.label,
            id=fine.id,
            path=list(fine.path),
            descriptions=[sentence],
            inputs_sha256=sha256_json({"source_sha256": official.sha256, "index": index}),
        )
        for index, (fine, sentence) in enumerate(zip(classes, official.sentences, strict=True))
    ]
    return DescriptionsFile(
        schema_version=SCHEMA_VERSION,
        taxonomy=TaxonomyRef(name=taxonomy.name, sha256=taxonomy.sha256),
        generator=GeneratorInfo(
            model=f"official class sentences of {OFFICIAL_REPOSITORY}",
            params={},
            imported=ImportedSource(
                repository=OFFICIAL_REPOSITORY,
                file=OFFICIAL_SOURCE.as_posix(),
                sha256=official.sha256,
                commit=official.commit,
            ),
        ),
        classes=entries,
    )
