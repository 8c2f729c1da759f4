"""Text from files, servers and users made safe to show: control characters found and escaped.

A name holding a newline breaks the one-line errors, and an escape sequence (ESC, the C1
controls, Unicode's bidirectional overrides) can rewrite what a terminal shows. Names are
refused when they hold one; every message shows them escaped, as Python writes them.
"""

from __future__ import annotations

import re

# C0 and C1 controls and DEL, the line and paragraph separators, and the bidirectional
# embeddings, overrides and isolates (which reorder what follows them on screen).
_UNICODE_CONTROLS = "\u2028\u2029\u202a-\u202e\u2066-\u2069"
_CONTROL = re.compile(f"[\x00-\x1f\x7f-\x9f{_UNICODE_CONTROLS}]")
_CONTROL_BUT_LAYOUT = re.compile(f"[\x00-\x08\x0b-\x1f\x7f-\x9f{_UNICODE_CONTROLS}]")


def first_control(text: str) -> str | None:
    """The first control character of `text`, escaped (e.g. `\\x1b`), or None when it has none."""
    found = _CONTROL.search(text)
    return None if found is None else _escaped(found)


def escape_controls(text: str, keep_layout: bool = False) -> str:
    """`text` with every control character written as its escape (`\\n`, `\\x1b`, `\\u202e`);
    `keep_layout` leaves newlines and tabs as they are, for text of several lines."""
    return (_CONTROL_BUT_LAYOUT if keep_layout else _CONTROL).sub(_escaped, text)


def _escaped(match: re.Match[str]) -> str:
    return repr(match.group())[1:-1]
