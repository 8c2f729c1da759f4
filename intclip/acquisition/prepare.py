"""`intclip-train prepare`: store the images already on disk smaller, once, so that every
epoch decodes small files (see `intclip.data.shrink` for how small and what it changes).

`<out>/<path>` mirrors `<images>/<path>`, each written to a hidden temporary file and renamed,
so an interrupted pass (Ctrl-C, SIGTERM) leaves whole images only, and a rerun skips every
output newer than its source. `<out>/prepare.json` records the settings, and a rerun with other
settings into the same folder is refused rather than mixing two sizes. Threads, not processes:
Pillow releases the GIL while it decodes, resizes and encodes, and no child outlives a stop.
No torch here.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from pydantic import BaseModel, Field, ValidationError

from intclip.acquisition.file_progress import progress_bar
from intclip.data.image_files import DECODE_ERRORS
from intclip.data.shrink import RESIZE_JPEG_QUALITY, shrink_or_copy, smallest_short_side
from pipeline.common.errors import EXIT_CHECK_FAILED, UserError
from pipeline.common.files import atomic_write_text, stable_json
from pipeline.common.safe_load import load_json, read_text_file

RECORD_NAME = "prepare.json"
TEMP_SUFFIX = ".prepare-tmp"


class PrepareSettings(BaseModel):
    """What the stored images are: the part of the record a rerun must match."""

    source: str = Field(description="the folder of the original images")
    resize_short_side: int
    jpeg_quality: int = RESIZE_JPEG_QUALITY
    crop_size: int
    crop_scale_min: float


class PrepareFailure(BaseModel):
    path: str
    error: str


class PrepareRecord(PrepareSettings):
    """`<out>/prepare.json`; counts are those of the last pass, null while one is under way."""

    total: int | None = None
    resized: int | None = None
    copied: int | None = Field(default=None, description="small enough already: copied as is")
    skipped: int | None = Field(default=None, description="up to date from an earlier pass")
    failures: list[PrepareFailure] = []


@dataclass
class Tally:
    resized: int = 0
    copied: int = 0
    skipped: int = 0
    failed: int = 0

    @property
    def done(self) -> int:
        return self.resized + self.copied + self.skipped + self.failed

    def __str__(self) -> str:
        return (
            f"resized {self.resized}, copied {self.copied}, up to date {self.skipped}, "
            f"failed {self.failed}"
        )


def check_short_side(short_side: int, crop_size: int, crop_scale_min: float) -> None:
    """Refuse a short side that would let a training crop be enlarged (the rule of `shrink`)."""
    if not 0 < crop_scale_min <= 1:
        raise UserError(f"--crop-scale-min {crop_scale_min:g} is not in (0, 1]")
    least = smallest_short_side(crop_size, crop_scale_min)
    if short_side < least:
        raise UserError(
            f"--resize-short-side {short_side} is below {least}, the least that keeps every crop "
            f"of --crop-size {crop_size} at --crop-scale-min {crop_scale_min:g} from being "
            "enlarged (short side >= crop size * sqrt(4 / (3 * crop scale min)))"
        )


def image_files(root: Path) -> list[str]:
    """Paths under `root`, relative, of the files Pillow can read and write back in their own
    format (not, say, a PDF, which it only writes); hidden files and symlinked folders (which
    could loop) are left out."""
    Image.init()
    suffixes = {
        suffix
        for suffix, name in Image.registered_extensions().items()
        if name in Image.OPEN and name in Image.SAVE
    }
    found = []
    for folder, subfolders, files in os.walk(root, onerror=_unlistable):
        subfolders[:] = sorted(
            name
            for name in subfolders
            if not name.startswith(".") and not os.path.islink(os.path.join(folder, name))
        )
        relative = Path(folder).relative_to(root)
        found += [
            (relative / name).as_posix()
            for name in sorted(files)
            if not name.startswith(".") and Path(name).suffix.lower() in suffixes
        ]
    return found


def _unlistable(err: OSError) -> None:
    raise UserError(f"{err.filename}: cannot list this folder ({err.strerror})")


def _check_folders(images: Path, out: Path) -> None:
    if not images.is_dir():
        raise UserError(f"{images}: --images is not a folder")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: --out is not a folder")
    source, target = images.resolve(), out.resolve()
    if target.is_relative_to(source) or source.is_relative_to(target):
        raise UserError(f"{out}: --out must lie outside --images ({images}) and not contain it")


def _check_record(path: Path, settings: PrepareSettings) -> None:
    """An earlier pass into `out` must have used the same settings."""
    if not path.exists():
        return
    try:
        earlier = PrepareRecord.model_validate(load_json(read_text_file(path, "record"), path))
    except ValidationError as err:
        raise UserError(f"{path}: not a prepare record ({err.errors()[0]['msg']})") from None
    mine = settings.model_dump()
    theirs = earlier.model_dump(include=set(mine))
    if theirs != mine:
        differ = ", ".join(
            f"{key} {theirs[key]!r} (not {mine[key]!r})" for key in mine if theirs[key] != mine[key]
        )
        raise UserError(
            f"{path}: this folder holds images prepared with {differ}; "
            "give another --out, or remove it first"
        )


def _up_to_date(source: Path, target: Path) -> bool:
    try:
        return target.stat().st_mtime_ns >= source.stat().st_mtime_ns
    except FileNotFoundError:
        return False


def _prepare_one(source: Path, target: Path, short_side: int) -> str:
    """ "skipped", "resized" or "copied"; the temporary file never outlives a failure."""
    if _up_to_date(source, target):
        return "skipped"
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}{TEMP_SUFFIX}")
    try:
        resized = shrink_or_copy(source, temporary, short_side, target.suffix)
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    return "resized" if resized else "copied"


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops the pass as Ctrl-C does: in-flight images finish, nothing is half-written."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def plan(images: Path, out: Path, settings: PrepareSettings) -> list[str]:
    """Check the folders, the short side and an earlier record; the images to store, with the
    record of a pass under way written first (so a stopped pass is labelled too)."""
    _check_folders(images, out)
    check_short_side(settings.resize_short_side, settings.crop_size, settings.crop_scale_min)
    record_path = out / RECORD_NAME
    _check_record(record_path, settings)
    paths = image_files(images)
    if not paths:
        raise UserError(f"{images}: no image files in this folder")
    atomic_write_text(record_path, stable_json(PrepareRecord(**settings.model_dump()).model_dump()))
    return paths


def prepare(
    images: Path,
    out: Path,
    settings: PrepareSettings,
    paths: Sequence[str],
    workers: int,
    on_progress: Callable[[Tally], None] = lambda tally: None,
) -> PrepareRecord:
    """Store `paths` (from `plan`) of `images` under `out` with the settings' short side."""
    tally, failures = Tally(), []
    with _sigterm_as_interrupt(), ThreadPoolExecutor(workers) as pool:
        side = settings.resize_short_side
        pending = {pool.submit(_prepare_one, images / p, out / p, side): p for p in paths}
        try:
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for job in finished:
                    path = pending.pop(job)
                    try:
                        outcome = job.result()
                    except DECODE_ERRORS as err:
                        failures.append(PrepareFailure(path=path, error=str(err)))
                        tally.failed += 1
                    else:
                        setattr(tally, outcome, getattr(tally, outcome) + 1)
                on_progress(tally)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    record = PrepareRecord(
        **settings.model_dump(),
        total=len(paths),
        resized=tally.resized,
        copied=tally.copied,
        skipped=tally.skipped,
        failures=sorted(failures, key=lambda failure: failure.path),
    )
    atomic_write_text(out / RECORD_NAME, stable_json(record.model_dump()))
    return record


def run_prepare(
    images: Path, out: Path, settings: PrepareSettings, workers: int, echo: Callable[[str], None]
) -> PrepareRecord:
    """`prepare` with a progress bar; `UserError` (exit 1) when some images failed."""
    paths = plan(images, out, settings)
    with progress_bar(len(paths), Tally(), str, lambda tally: tally.done) as update:
        record = prepare(images, out, settings, paths, workers, update)
    echo(
        f"{record.resized} resized, {record.copied} copied (small already), {record.skipped} up "
        f"to date, {len(record.failures)} failed of {record.total} images; "
        f"record: {out / RECORD_NAME}"
    )
    if record.failures:
        first = record.failures[0]
        raise UserError(
            f"{len(record.failures)} images could not be prepared, the first: {first.path}: "
            f"{first.error}; all are listed in {out / RECORD_NAME}",
            EXIT_CHECK_FAILED,
        )
    return record
