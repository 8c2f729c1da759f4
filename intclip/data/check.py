"""The data preflight: every way an entry can break a run, found before the run starts."""

from __future__ import annotations

import json
import os
import stat
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from intclip.data.dataset import EntryProblem, LabelIndex
from intclip.data.image_files import decode_problem, outside_root
from pipeline.common.files import NotARegularFile, atomic_write_text


class DecodedImages:
    """Images already decoded in full, by path, size and modification time, kept in a JSON file
    under the cache: every run decodes its images before the first epoch, so a corrupt one stops
    it there rather than mid-epoch, and a second run over unchanged files decodes nothing."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            known = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            known = {}
        self._known: dict[str, list[int]] = known if isinstance(known, dict) else {}
        self._changed = False

    @staticmethod
    def _signature(path: Path) -> list[int]:
        stat = path.stat()
        return [stat.st_size, stat.st_mtime_ns]

    def decoded(self, path: Path) -> bool:
        return self._known.get(str(path.resolve())) == self._signature(path)

    def add(self, path: Path) -> None:
        self._known[str(path.resolve())] = self._signature(path)
        self._changed = True

    def save(self) -> None:
        if self._changed:
            atomic_write_text(self.path, json.dumps(self._known))
            self._changed = False


def check_index(
    index: LabelIndex, decode: bool = True, decoded: DecodedImages | None = None
) -> list[EntryProblem]:
    """Label problems found while indexing, then file problems: a path outside the image root
    (`../x`, absolute, or a link leading out), missing, unreadable, corrupt or truncated.

    `decode=False` skips decoding every image; `decoded` skips the images decoded before.
    """
    root = index.image_root.resolve()
    problems = list(index.problems)
    for row, relative in enumerate(index.paths):
        where = index.where(row)
        problem = _file_problem(root, relative, decode, decoded)
        if problem is not None:
            kind, detail = problem
            problems.append(EntryProblem(row, where, kind, detail))
    if decoded is not None:
        decoded.save()
    return sorted(problems, key=lambda p: p.row)


def _file_problem(
    root: Path, relative: str, decode: bool, decoded: DecodedImages | None
) -> tuple[str, str] | None:
    if not relative:
        return "missing", "empty image path"
    escape = outside_root(root, relative)
    if escape is not None:
        return "outside image root", escape
    path = root / relative
    try:
        mode = path.stat().st_mode
    except OSError:
        return "missing", str(path)
    if not stat.S_ISREG(mode):  # a FIFO would block the decoder forever
        return "not a regular file", f"{path} is {NotARegularFile(path, mode).kind}"
    if not os.access(path, os.R_OK):
        return "unreadable", str(path)
    if not decode or (decoded is not None and decoded.decoded(path)):
        return None
    problem = decode_problem(path)
    if problem is None and decoded is not None:
        decoded.add(path)
    return problem


def summarize(problems: Iterable[EntryProblem]) -> str:
    """`3 missing, 1 corrupt` in a stable order."""
    counts = Counter(problem.kind for problem in problems)
    return ", ".join(f"{count} {kind}" for kind, count in sorted(counts.items()))
