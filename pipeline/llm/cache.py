"""Validated LLM answers on disk, one file per request, so that a rerun sends nothing.

An entry is `<root>/<key>.json` holding the request summary and the validated answer, where
`key` is the sha256 of that summary: anyone can read what was asked and what came back, and an
entry is used only when its summary equals the request, whatever its file name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.common.files import atomic_write_text, sha256_json, stable_json


def request_key(request: dict[str, Any]) -> str:
    """The cache key of a request summary: independent of dict order, sensitive to every value."""
    return sha256_json(request)


class LLMCache:
    """A directory of answers keyed by request; unreadable entries count as misses."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path_for(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def load(self, request: dict[str, Any]) -> Any | None:
        """The stored answer for `request`, or None when absent, corrupt or for another request."""
        try:
            entry = json.loads(self.path_for(request_key(request)).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        if not isinstance(entry, dict) or entry.get("request") != request:
            return None
        return entry.get("answer")

    def store(self, request: dict[str, Any], answer: Any) -> Path:
        """Write the entry atomically, replacing any older or corrupt one."""
        path = self.path_for(request_key(request))
        atomic_write_text(path, stable_json({"request": request, "answer": answer}))
        return path
