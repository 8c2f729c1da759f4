"""File helpers shared by every stage: atomic writes, hashing, the cache root."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import tempfile
import tomllib
from pathlib import Path
from typing import Any, BinaryIO

from pipeline.common.errors import UserError

CACHE_DIR_ENV = "INTCLIP_CACHE_DIR"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
_WHEEL_PROMPTS = Path(__file__).resolve().parents[1] / "bundled_prompts"


def project_prompts() -> Path:
    """The project's `prompts/` (Intentonomy's taxonomy and descriptions, the prompt
    templates): the copy an installed wheel carries (pyproject.toml), else the checkout's."""
    return _WHEEL_PROMPTS if _WHEEL_PROMPTS.is_dir() else PROJECT_ROOT / "prompts"


_FILE_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


class NotARegularFile(OSError):
    """A path that names a FIFO, a device, a socket or a directory, where a file was expected."""

    def __init__(self, path: Path, mode: int) -> None:
        self.kind = _FILE_KINDS.get(stat.S_IFMT(mode), "an unknown kind of file")
        super().__init__(errno.EINVAL, f"not a regular file: {self.kind}")
        self.path = Path(path)


def open_regular(path: Path) -> BinaryIO:
    """`path` opened for binary reading, only if it is a regular file (a link to one is fine).

    A FIFO without a writer would block `open` forever, a device never ends, so the kind is
    checked before opening, then again on the descriptor, which is opened without blocking
    (a FIFO put in the file's place meanwhile is refused, not waited for). Raises
    `NotARegularFile`, or the OSError of `open` (missing, no permission, a NUL in the path
    is ValueError)."""
    path = Path(path)
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise NotARegularFile(path, mode)
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            raise NotARegularFile(path, mode)
        os.set_blocking(descriptor, True)
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a temporary file beside `path`, then rename: readers never see half a file, and
    the previous file stays intact when writing fails. Any reason it fails (disk full,
    read-only, a file where a directory should be) is one line naming the path."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except (OSError, ValueError) as err:
        raise _unwritable(path, err) from None
    try:
        os.fchmod(fd, _new_file_mode(path))
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise _unwritable(path, err) from None
        raise


def _unwritable(path: Path, err: OSError | ValueError) -> UserError:
    reason = getattr(err, "strerror", None) or str(err)
    return UserError(f"{path}: cannot write ({reason})")


def _new_file_mode(path: Path) -> int:
    """The mode a plain `open(path, "w")` would give: the file's own when it exists, else 0666
    less the umask (mkstemp alone makes every artifact 0600)."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        return 0o666 & ~current_umask()


def current_umask() -> int:
    """The process umask, read without changing it (Linux), else by setting and restoring it."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def stable_json(obj: Any) -> str:
    """The JSON layout of reviewed artifacts: sorted keys, 2-space indent, UTF-8, final newline."""
    return json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_json(obj: Any) -> str:
    """Hash of a JSON-able object, independent of key order."""
    return sha256_bytes(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode("utf-8"))


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def cache_root(override: Path | None = None) -> Path:
    """`--cache-dir`, else `$INTCLIP_CACHE_DIR`, else `cache/` of the intclip checkout the
    working directory is in, else `./cache`; never the installed package's directory, which
    may be read-only or shared by every user."""
    if override is not None:
        return Path(override)
    env = os.environ.get(CACHE_DIR_ENV)
    if env:
        return Path(env)
    here = Path.cwd()
    for folder in (here, *here.parents):
        if _is_intclip_checkout(folder):
            return folder / "cache"
    return here / "cache"


def _is_intclip_checkout(folder: Path) -> bool:
    try:
        project = tomllib.loads((folder / "pyproject.toml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False
    return project.get("project", {}).get("name") == "intclip"
