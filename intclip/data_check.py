"""The data preflight: every way an entry can break a run, found before the run starts."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from intclip.data import EntryProblem, LabelIndex
from intclip.image_files import decode_problem, outside_root


def check_index(index: LabelIndex, decode: bool = True) -> list[EntryProblem]:
    """Label problems found while indexing, then file problems: a path outside the image root
    (`../x`, absolute, or a link leading out), missing, unreadable, corrupt or truncated.

    `decode=False` skips decoding every image, for a quick check before each run.
    """
    root = index.image_root.resolve()
    problems = list(index.problems)
    for row, relative in enumerate(index.paths):
        where = index.where(row)
        problem = _file_problem(root, relative, decode)
        if problem is not None:
            kind, detail = problem
            problems.append(EntryProblem(row, where, kind, detail))
    return sorted(problems, key=lambda p: p.row)


def _file_problem(root: Path, relative: str, decode: bool) -> tuple[str, str] | None:
    if not relative:
        return "missing", "empty image path"
    escape = outside_root(root, relative)
    if escape is not None:
        return "outside image root", escape
    path = root / relative
    if not path.is_file():
        return "missing", str(path)
    if not os.access(path, os.R_OK):
        return "unreadable", str(path)
    if decode:
        return decode_problem(path)
    return None


def summarize(problems: Iterable[EntryProblem]) -> str:
    """`3 missing, 1 corrupt` in a stable order."""
    counts = Counter(problem.kind for problem in problems)
    return ", ".join(f"{count} {kind}" for kind, count in sorted(counts.items()))
