"""The one reader of YAML and JSON text from users: bounded, plain data, one-line errors.

Every taxonomy, training config, `--set` value, descriptions file, manifest, annotation file and
prompt template goes through here, so no reader can be made to hang, exhaust memory or overflow
the stack: only regular files are opened (a FIFO or a device is refused before anything is read),
the size of the text, the nesting depth, the length of a number (Python refuses to convert an
integer of more than 4,300 digits, and a float that long is infinite) and the size after
expanding YAML aliases are bounded (billion laughs), and only plain data is built — explicit
tags (`!!python/...`, `!x`), complex keys (`? [a, b]`) and duplicate keys, in YAML and JSON
alike, are refused with the file and line at fault.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from pipeline.common.errors import UserError
from pipeline.common.files import open_regular

MAX_DEPTH = 64
MAX_NODES = 100_000  # counted with every alias expanded
MAX_BYTES = 16 << 20
MAX_NUMBER_CHARS = 100
"""The longest number literal read, sign, point and exponent included: far more digits than
any float holds, far fewer than Python's integer conversion limit."""
# libyaml's parser when PyYAML was built with it (its wheels are): the same events and nodes as
# the pure-Python one, an order of magnitude sooner; objects are still built in Python, by
# SafeLoader's constructor, from checked nodes only.
FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


# JSON strings (the unrolled form: runs of plain characters in one step), and all but brackets
_NOT_A_BRACKET = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[^\[\]{}"]+')
_INNERMOST_PAIR = re.compile(r"\[\]|\{\}")
# A run of digits too long for a number: the sign that a JSON text may hold one (or a string
# that happens to be long digits, which the exact second look tells apart).
_LONG_DIGITS = re.compile(rf"[0-9]{{{MAX_NUMBER_CHARS - 1},}}")
_YAML_NUMBER_TAGS = frozenset({"tag:yaml.org,2002:int", "tag:yaml.org,2002:float"})


class UnsafeInput(UserError):
    """Text no reader should build: too deep, too large once expanded, or not plain data."""


def read_text_file(path: Path, what: str) -> str:
    """A UTF-8 text file of bounded size; any reason it cannot be read is one line."""
    path = Path(path)
    try:
        with open_regular(path) as handle:
            data = handle.read(MAX_BYTES + 1)  # bounded: a file that grows cannot exhaust memory
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
    """JSON data with the nesting and the numbers bounded and every key of an object once;
    errors name the line."""
    try:
        data = json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as err:
        raise UserError(f"{source}:{err.lineno}: invalid JSON: {err.msg}") from None
    except RecursionError:
        raise UnsafeInput(f"{source}: nested deeper than {MAX_DEPTH} levels") from None
    except _DuplicateKey as err:
        line = _line_of_duplicate(text, err.key)
        raise UnsafeInput(f"{source}:{line}: duplicate key {_quoted(err.key)}") from None
    except ValueError:  # an integer beyond Python's conversion limit
        _check_json_numbers(text, source)
        raise
    _check_json_numbers(text, source)
    if _json_depth(text) > MAX_DEPTH:
        raise UnsafeInput(f"{source}: nested deeper than {MAX_DEPTH} levels")
    return data


class _DuplicateKey(Exception):
    def __init__(self, key: str, position: int | None = None) -> None:
        super().__init__(key)
        self.key, self.position = key, position


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object's pairs as a dict, refused when a key repeats (json keeps the last silently)."""
    data = dict(pairs)
    if len(data) != len(pairs):
        seen: set[str] = set()
        raise _DuplicateKey(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return data


def _line_of_duplicate(text: str, key: str) -> int:
    """The line of a repeated key, found on the error path only: the pure-Python scanner, which
    lets an object's parser know where the object starts, finds the object; the key's second
    occurrence in it is the line."""
    decoder = json.JSONDecoder(object_pairs_hook=_unique_keys)

    def parse_object(s_and_end: tuple[str, int], *args: Any) -> tuple[dict[str, Any], int]:
        try:
            return json.decoder.JSONObject(s_and_end, *args)
        except _DuplicateKey as err:
            where = s_and_end[1] if err.position is None else err.position
            raise _DuplicateKey(err.key, where) from None

    decoder.parse_object = parse_object
    decoder.scan_once = json.scanner.py_make_scanner(decoder)
    try:
        decoder.decode(text)
    except _DuplicateKey as err:
        start = err.position or 0
    except (ValueError, RecursionError):
        start = 0
    found = list(re.finditer(rf"{re.escape(json.dumps(key))}\s*:", text[start:]))
    at = start + found[1].start() if len(found) > 1 else start
    return text.count("\n", 0, at) + 1


def _check_json_numbers(text: str, source: str | Path) -> None:
    """No number literal longer than MAX_NUMBER_CHARS. A regex finds the rare text that may
    hold one; only that text is parsed again, with every number checked."""
    if _LONG_DIGITS.search(text) is None:
        return

    def bounded(convert: Callable[[str], Any]) -> Callable[[str], Any]:
        def parse(literal: str) -> Any:
            if len(literal) > MAX_NUMBER_CHARS:
                line = text.count("\n", 0, max(text.find(literal), 0)) + 1
                raise UnsafeInput(
                    f"{source}:{line}: a number of {len(literal):,} characters; numbers may "
                    f"have at most {MAX_NUMBER_CHARS}"
                )
            return convert(literal)

        return parse

    json.loads(text, parse_int=bounded(int), parse_float=bounded(float))


def _quoted(text: str) -> str:
    """A key as it can be shown on one line: control characters escaped."""
    return repr(text)


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
            if node.tag in _YAML_NUMBER_TAGS and len(node.value) > MAX_NUMBER_CHARS:
                raise UnsafeInput(
                    f"{source}:{_line(node.start_mark)}: a number of {len(node.value):,} "
                    f"characters; numbers may have at most {MAX_NUMBER_CHARS}"
                )
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
            raise UnsafeInput(
                f"{source}:{_line(key.start_mark)}: duplicate key {_quoted(key.value)}"
            )
        seen.add(key.value)
        children += [key, value]
    return children
