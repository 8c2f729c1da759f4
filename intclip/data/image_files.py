"""Image files under an image root: paths that stay inside it, files that decode completely.

Shared by `check-data` and `download`; no torch, so `download` starts fast.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.common.files import NotARegularFile
from pipeline.common.image_errors import DECODE_ERRORS, ImageTooLarge, opened_image


def outside_root(root: Path, relative: str) -> str | None:
    """Why `relative` names no path strictly inside `root` (NUL; empty, `.`, `..` or a final
    `/`, which name no file; absolute; `..` or a link leading out; the root itself), or None.

    `root` must already be resolved.
    """
    if "\0" in relative:
        return f"{relative!r} contains a NUL character"
    if relative.rsplit("/", 1)[-1] in ("", ".", ".."):
        return f"{relative!r} names no file (empty, '.', '..' or ending in '/')"
    if Path(relative).is_absolute():
        return f"{relative} is an absolute path"
    resolved = (root / relative).resolve()
    if resolved == root or not resolved.is_relative_to(root):
        return f"{relative} resolves to {resolved}"
    return None


def decode_problem(path: Path) -> tuple[str, str] | None:
    """Verify the container, then decode every pixel: a cut-off file passes verify() alone.

    Returns (`truncated`, `corrupt`, `too large` or `not a regular file`, detail), or None for
    a whole image.
    """
    try:
        with opened_image(path) as image:
            image.verify()
        with opened_image(path) as image:
            image.load()
    except ImageTooLarge as err:
        return "too large", f"{path}: {err}"
    except NotARegularFile as err:
        return "not a regular file", f"{path} is {err.kind}"
    except DECODE_ERRORS as err:
        kind = "truncated" if "truncated" in str(err).lower() else "corrupt"
        return kind, f"{path}: {err}"
    return None
