"""The class taxonomy: a nested YAML tree, coarse to fine, validated with every error located.

A taxonomy file is reviewed by people and read by every later stage, so a mistake in it is
reported as `file:line: node 'id': what is wrong`, all mistakes at once, before anything runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    ValidationError,
)

from pipeline.common.errors import EXIT_BAD_INPUT, UserError
from pipeline.common.files import sha256_json
from pipeline.common.safe_load import compose_yaml, construct_yaml, read_text_file
from pipeline.common.text import first_control

SLUG_PATTERN = r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*$"
MISSING_LABELS_SHOWN = 10  # a gap in the labels names this many of them, then a count


def _no_control_characters(text: str) -> str:
    """Names reach prompts, file headers and every terminal that shows a message: a newline
    or an escape sequence in one would break lines or rewrite the screen."""
    found = first_control(text)
    if found is not None:
        raise ValueError(f"must not contain control characters (found {found})")
    return text


Slug = Annotated[str, StringConstraints(pattern=SLUG_PATTERN)]
NonEmpty = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1),
    AfterValidator(_no_control_characters),
]


class TaxonomyNode(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Slug
    name: NonEmpty
    label: Annotated[int, Strict(), Field(ge=0)] | None = None
    dataset_name: NonEmpty | None = None
    children: tuple[TaxonomyNode, ...] = ()


class TaxonomyDocument(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Slug
    levels: tuple[NonEmpty, ...] = Field(min_length=1)
    nodes: tuple[TaxonomyNode, ...] = Field(min_length=1)


@dataclass(frozen=True)
class FineClass:
    """A leaf of the taxonomy with everything a prompt or a dataset needs to know about it."""

    label: int
    id: str
    name: str
    path: tuple[str, ...]
    path_ids: tuple[str, ...]
    family: tuple[tuple[str, str], ...]
    """(id, name) of every child of its parent, itself included: one tuple shared by them all,
    so that a taxonomy of many classes under one parent loads in linear time and memory."""
    dataset_name: str | None

    @property
    def siblings(self) -> tuple[str, ...]:
        """The names of the other children of its parent."""
        return tuple(name for node_id, name in self.family if node_id != self.id)


@dataclass(frozen=True)
class Taxonomy:
    """A validated taxonomy; `classes` are the fine classes sorted by label."""

    source: Path
    document: TaxonomyDocument
    classes: tuple[FineClass, ...]

    @property
    def name(self) -> str:
        return self.document.name

    @property
    def levels(self) -> tuple[str, ...]:
        return self.document.levels

    @property
    def sha256(self) -> str:
        """Hash of the validated content: comments and layout of the YAML do not count."""
        return sha256_json(self.document.model_dump(mode="json"))

    def counts(self) -> dict[str, int]:
        """Number of nodes at each level, coarse to fine."""
        counts = dict.fromkeys(self.levels, 0)
        for depth, _, _ in _walk(self.document.nodes):
            counts[self.levels[depth]] += 1
        return counts

    def ancestors_of(self, label: int) -> tuple[str, ...]:
        """Ids of the nodes on the path to a fine class, coarse first, the class itself last."""
        return self.classes[label].path_ids

    def leaves_under(self, node_id: str) -> list[FineClass]:
        """Fine classes under (or equal to) the node `node_id`."""
        return [c for c in self.classes if node_id in c.path_ids]


class TaxonomyError(UserError):
    """All problems of one taxonomy file, each a `file:line: message` line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems), EXIT_BAD_INPUT)
        self.problems = problems


def load_taxonomy(path: Path) -> Taxonomy:
    """Read and validate a taxonomy file; raise `TaxonomyError` listing every problem."""
    path = Path(path)
    try:
        text = read_text_file(path, "taxonomy")
    except UserError as err:
        raise TaxonomyError([str(err)]) from None
    return parse_taxonomy(text, path)


def parse_taxonomy(text: str, source: Path) -> Taxonomy:
    root = compose_yaml(text, source)
    if root is None:
        raise TaxonomyError([f"{source}:1: the file is empty"])
    locator = _Locator(source, root)
    problems: list[str] = []
    data = construct_yaml(root)
    if not isinstance(data, dict):
        raise TaxonomyError(
            [f"{source}:1: the taxonomy must be a mapping with name, levels, nodes"]
        )
    try:
        document = TaxonomyDocument.model_validate(data)
    except ValidationError as err:
        problems += [locator.describe(e["loc"], _pydantic_message(e), data) for e in err.errors()]
        raise TaxonomyError(problems) from None
    problems += _tree_problems(document, locator)
    if problems:
        raise TaxonomyError(problems)
    return Taxonomy(source, document, _fine_classes(document))


class _Locator:
    """Maps a path into the parsed data (a pydantic `loc`) back to its YAML line."""

    def __init__(self, source: Path, root: yaml.Node) -> None:
        self.source = source
        self.root = root

    def line(self, loc: tuple[Any, ...]) -> int:
        node = self.root
        for key in loc:
            child = self._child(node, key)
            if child is None:
                break
            node = child
        return node.start_mark.line + 1

    @staticmethod
    def _child(node: yaml.Node, key: Any) -> yaml.Node | None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if key_node.value == key:
                    return value_node
        if isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            return node.value[key]
        return None

    def describe(self, loc: tuple[Any, ...], message: str, data: Any) -> str:
        """`file:line: node 'id': message`, naming the innermost node that has an id."""
        node_id = _innermost_id(data, loc)
        where = f"node '{node_id}': " if node_id else ""
        return f"{self.source}:{self.line(loc)}: {where}{message}"


def _innermost_id(data: Any, loc: tuple[Any, ...]) -> str | None:
    found = None
    for key in loc:
        if isinstance(data, dict) and isinstance(data.get("id"), str):
            found = data["id"]
        try:
            data = data[key]
        except (KeyError, IndexError, TypeError):
            return found
    if isinstance(data, dict) and isinstance(data.get("id"), str):
        found = data["id"]
    return found


_MESSAGES = {
    "extra_forbidden": "unknown key '{field}'",
    "missing": "'{field}' is required",
    "string_pattern_mismatch": "'{field}' must be a lowercase slug (like 'good_life'): {input!r}",
    "string_too_short": "'{field}' must not be empty",
    "too_short": "'{field}' must not be empty",
    "value_error": "'{field}' {reason}",
}


def _pydantic_message(error: Any) -> str:
    field = next((str(k) for k in reversed(error["loc"]) if isinstance(k, str)), "value")
    template = _MESSAGES.get(error["type"], "'{field}': {msg}")
    reason = error["msg"].removeprefix("Value error, ")
    return template.format(field=field, input=error.get("input"), msg=error["msg"], reason=reason)


def _walk(
    nodes: tuple[TaxonomyNode, ...],
    depth: int = 0,
    loc: tuple[Any, ...] = ("nodes",),
    parent: TaxonomyNode | None = None,
) -> Iterator[tuple[int, TaxonomyNode, tuple[tuple[Any, ...], TaxonomyNode | None]]]:
    """Depth-first (depth, node, (yaml loc, parent)) for every node of the tree."""
    for index, node in enumerate(nodes):
        node_loc = (*loc, index)
        yield depth, node, (node_loc, parent)
        yield from _walk(node.children, depth + 1, (*node_loc, "children"), node)


def _tree_problems(document: TaxonomyDocument, locator: _Locator) -> list[str]:
    """The rules pydantic cannot see node by node: depth, uniqueness, labels."""
    problems: list[str] = []
    leaf_depth = len(document.levels) - 1
    first_seen: dict[str, TaxonomyNode | None] = {}
    labels: dict[int, str] = {}
    leaves: list[tuple[tuple[Any, ...], TaxonomyNode]] = []

    def report(loc: tuple[Any, ...], node: TaxonomyNode, message: str) -> str:
        return f"{locator.source}:{locator.line(loc)}: node '{node.id}': {message}"

    for depth, node, (loc, parent) in _walk(document.nodes):
        level = document.levels[depth] if depth < len(document.levels) else None
        if node.id in first_seen:
            first = first_seen[node.id]
            parents = [p.id if p else "the root" for p in (first, parent)]
            where = "twice under one parent" if parents[0] == parents[1] else "under two parents"
            problems.append(
                report(loc, node, f"id appears {where}: '{parents[0]}' and '{parents[1]}'")
            )
        first_seen.setdefault(node.id, parent)
        if depth > leaf_depth:
            problems.append(
                report(loc, node, f"is deeper than the last level '{document.levels[-1]}'")
            )
        elif depth < leaf_depth and not node.children:
            problems.append(
                report(
                    loc,
                    node,
                    f"is a '{level}' node and needs children down to '{document.levels[-1]}'",
                )
            )
        if depth == leaf_depth:
            leaves.append((loc, node))
            if node.label is not None:
                labels.setdefault(node.label, node.id)
        else:
            if node.label is not None:
                problems.append(
                    report(
                        (*loc, "label"),
                        node,
                        f"'label' is only allowed on '{document.levels[-1]}' nodes",
                    )
                )
            if node.dataset_name is not None:
                problems.append(
                    report(
                        (*loc, "dataset_name"),
                        node,
                        f"'dataset_name' is only allowed on '{document.levels[-1]}' nodes",
                    )
                )
    problems += _label_problems(leaves, labels, document.levels[-1], report)
    return problems


def _label_problems(
    leaves: list[tuple[tuple[Any, ...], TaxonomyNode]],
    first_owner: dict[int, str],
    leaf_level: str,
    report: Callable[[tuple[Any, ...], TaxonomyNode, str], str],
) -> list[str]:
    """Labels must be exactly 0..N-1 over the N leaves. A gap always has a cause at some leaf
    (no label, a label used twice, or one out of range), so each problem names that leaf and its
    line, and says which labels are missing."""
    count = len(leaves)
    missing = sorted(set(range(count)) - set(first_owner))
    shown = ", ".join(map(str, missing[:MISSING_LABELS_SHOWN]))
    if len(missing) > MISSING_LABELS_SHOWN:
        shown += f", ... ({len(missing):,} in all)"
    gap = f"; labels must be exactly 0..{count - 1}, missing [{shown}]" if missing else ""
    problems = []
    for loc, node in leaves:
        if node.label is None:
            problems.append(report(loc, node, f"'label' is required on '{leaf_level}' nodes{gap}"))
        elif first_owner[node.label] != node.id:
            used_by = first_owner[node.label]
            problems.append(
                report(loc, node, f"label {node.label} is already used by '{used_by}'{gap}")
            )
        elif node.label >= count:
            problems.append(
                report(
                    (*loc, "label"),
                    node,
                    f"label {node.label} is out of range for {count} leaves{gap}",
                )
            )
    return problems


def _fine_classes(document: TaxonomyDocument) -> tuple[FineClass, ...]:
    classes: list[FineClass] = []

    def visit(nodes: tuple[TaxonomyNode, ...], path: tuple[TaxonomyNode, ...]) -> None:
        family = tuple((s.id, s.name) for s in nodes)
        for node in nodes:
            here = (*path, node)
            if node.children:
                visit(node.children, here)
                continue
            classes.append(
                FineClass(
                    label=node.label if node.label is not None else -1,
                    id=node.id,
                    name=node.name,
                    path=tuple(n.name for n in here),
                    path_ids=tuple(n.id for n in here),
                    family=family,
                    dataset_name=node.dataset_name,
                )
            )

    visit(document.nodes, ())
    return tuple(sorted(classes, key=lambda c: c.label))
