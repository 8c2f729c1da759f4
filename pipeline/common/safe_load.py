"""The one reader of YAML and JSON text from users: bounded, plain data, one-line errors.

Every taxonomy, training config, `--set` value, descriptions file, manifest and annotation file
goes through here, so no reader can be made to hang, exhaust memory or overflow the stack:
the nesting depth and the size after expanding YAML aliases are bounded (billion laughs), and
only plain data is built — explicit tags (`!!python/...`, `!x`), complex keys (`? [a, b]`) and
duplicate keys are refused with the file and line at fault.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from pipeline.common.errors import UserError

MAX_DEPTH = 64
MAX_NODES = 100_000  # counted with every alias expanded
MAX_BYTES = 16 << 20
# libyaml's parser when PyYAML was built with it (its wheels are): the same events and nodes as
# the pure-Python one, an order of magnitude sooner; objects are still built in Python, by
# SafeLoader's constructor, from checked nodes only.
FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


# JSON strings (the unrolled form: runs of plain characters in one step), and all but brackets
_NOT_A_BRACKET = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[^\[\]{}"]+')
_INNERMOST_PAIR = re.compile(r"\[\]|\{\}")


class UnsafeInput(UserError):
    """Text no reader should build: too deep, too large once expanded, or not plain data."""


def read_text_file(path: Path, what: str) -> str:
    """A UTF-8 text file of bounded size; any reason it cannot be read is one line."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_BYTES + 1)  # bounded: /dev/zero or a FIFO cannot hang it
        if len(data) > MAX_BYTES:
            raise UnsafeInput(f"{path}: {what} larger than {MAX_BYTES >> 20} MiB")
        return data.decode("utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: {what} not found") from None
    except UnicodeDecodeError as err:
        raise UserError(
            f"{path}: {what} is not UTF-8 text ({err.reason} at byte {err.start})"
        ) from None
    except (OSError, ValueError) as err:  # a directory, no permission, a NUL in the path
        reason = getattr(err, "strerror", None) or err
        raise UserError(f"{path}: cannot read {what} ({reason})") from None


def compose_yaml(text: str, source: str | Path) -> yaml.Node | None:
    """The checked node tree of one YAML document (None when empty), lines kept."""
    _check_events(text, source)
    try:
        root = yaml.compose(text, Loader=FAST_LOADER)
    except yaml.YAMLError as err:
        raise _yaml_error(err, source) from None
    if root is not None:
        _check_nodes(root, source)
    return root


def construct_yaml(root: yaml.Node | None) -> Any:
    """Plain Python data from a tree `compose_yaml` checked."""
    if root is None:
        return None
    return yaml.SafeLoader("").construct_document(root)


def load_yaml(text: str, source: str | Path) -> Any:
    """Plain data of one YAML document, every limit above enforced."""
    return construct_yaml(compose_yaml(text, source))


def load_json(text: str, source: str | Path) -> Any:
    """JSON data with the nesting bounded; errors name the line."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{source}:{err.lineno}: invalid JSON: {err.msg}") from None
    except RecursionError:
        raise UnsafeInput(f"{source}: nested deeper than {MAX_DEPTH} levels") from None
    if _json_depth(text) > MAX_DEPTH:
        raise UnsafeInput(f"{source}: nested deeper than {MAX_DEPTH} levels")
    return data


def _json_depth(text: str) -> int:
    """Nesting depth of JSON text that parsed, at regex speed (walking the parsed data took
    most of an annotation file's load): keep the brackets outside strings, then peel the
    innermost pairs, one level per pass, for at most MAX_DEPTH + 1 passes."""
    brackets = _NOT_A_BRACKET.sub("", text)
    depth = 0
    while brackets and depth <= MAX_DEPTH:
        brackets = _INNERMOST_PAIR.sub("", brackets)
        depth += 1
    return depth


def _line(mark: Any) -> int:
    return mark.line + 1 if mark is not None else 1


def _yaml_error(err: yaml.YAMLError, source: str | Path) -> UserError:
    if isinstance(err, yaml.MarkedYAMLError):
        mark = err.problem_mark or err.context_mark
        if "maximum nesting depth" in str(err.problem):  # libyaml's own limit, met first
            return UnsafeInput(f"{source}:{_line(mark)}: nested deeper than {MAX_DEPTH} levels")
        return UserError(f"{source}:{_line(mark)}: invalid YAML: {err.problem or err.context}")
    return UserError(f"{source}: invalid YAML: {' '.join(str(err).split())}")


def _check_events(text: str, source: str | Path) -> None:
    """Depth and tags from the event stream, before any node or object is built."""
    depth = 0
    try:
        for event in yaml.parse(text, Loader=FAST_LOADER):
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    line = _line(event.start_mark)
                    raise UnsafeInput(f"{source}:{line}: nested deeper than {MAX_DEPTH} levels")
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
            if isinstance(event, yaml.NodeEvent) and getattr(event, "tag", None) is not None:
                raise UnsafeInput(
                    f"{source}:{_line(event.start_mark)}: YAML tags such as {event.tag!r} are "
                    "not allowed; write plain values"
                )
    except yaml.YAMLError as err:
        raise _yaml_error(err, source) from None


def _check_nodes(root: yaml.Node, source: str | Path) -> None:
    """Keys plain and unique; the tree, with every alias expanded, small and acyclic."""
    size: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    on_path: set[int] = set()
    while stack:
        node, children_done = stack.pop()
        if isinstance(node, yaml.ScalarNode):
            size[id(node)] = 1
            continue
        children = _children(node, source)
        if children_done:
            on_path.discard(id(node))
            size[id(node)] = 1 + sum(size[id(child)] for child in children)
            if size[id(node)] > MAX_NODES:
                raise UnsafeInput(
                    f"{source}:{_line(node.start_mark)}: more than {MAX_NODES:,} values once "
                    "its aliases are expanded"
                )
            continue
        if id(node) in size:
            continue
        if id(node) in on_path:
            raise UnsafeInput(f"{source}:{_line(node.start_mark)}: an alias refers to itself")
        on_path.add(id(node))
        stack.append((node, True))
        for child in children:
            if id(child) in on_path:
                raise UnsafeInput(f"{source}:{_line(child.start_mark)}: an alias refers to itself")
            if id(child) not in size:
                stack.append((child, False))


def _children(node: yaml.Node, source: str | Path) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    children, seen = [], set()
    for key, value in node.value:
        if not isinstance(key, yaml.ScalarNode):
            raise UnsafeInput(
                f"{source}:{_line(key.start_mark)}: complex keys (a list or mapping as a key) "
                "are not allowed"
            )
        if key.value in seen:
            raise UnsafeInput(f"{source}:{_line(key.start_mark)}: duplicate key '{key.value}'")
        seen.add(key.value)
        children += [key, value]
    return children
