"""`intclip-train download` end to end: check the input, fetch with a progress bar, write the
report, say in one line how it went and exit 0 (every image present), 1 (some failed) or 2."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from intclip.acquisition.download import DEFAULT_REPORT_NAME, DownloadReport, Tally, download
from intclip.acquisition.file_progress import progress_bar
from intclip.acquisition.settings import DownloadSettings
from intclip.acquisition.sources import read_sources
from pipeline.common.errors import EXIT_CHECK_FAILED, UserError
from pipeline.common.files import atomic_write_text, stable_json


def size_text(count: int) -> str:
    """Bytes as people read them: kB below a megabyte, MB above."""
    return f"{count / 1e3:.1f} kB" if count < 1e6 else f"{count / 1e6:.1f} MB"


def _counts(tally: Tally) -> str:
    return (
        f"done {tally.downloaded}, skipped {tally.skipped}, failed {tally.failed}, "
        f"{size_text(tally.bytes)}"
    )


def _done(tally: Tally) -> int:
    return tally.downloaded + tally.skipped + tally.failed


def summary_line(report: DownloadReport, report_path: Path) -> str:
    return (
        f"{report.downloaded} downloaded, {report.skipped} already present, "
        f"{report.failed} failed of {report.total} images ({size_text(report.bytes)} received); "
        f"report: {report_path}"
    )


def run_download(
    annotations: Sequence[Path],
    image_root: Path,
    settings: DownloadSettings,
    report_path: Path | None,
    echo: Callable[[str], None],
) -> DownloadReport:
    """Fetch the images of `annotations` into `image_root`; `UserError` (exit 1) if some fail."""
    if image_root.exists() and not image_root.is_dir():
        raise UserError(f"{image_root}: --image-root is not a directory")
    report_path = report_path or image_root / DEFAULT_REPORT_NAME
    if report_path.is_dir():
        raise UserError(f"{report_path}: --report is a directory; give a file name")
    sources = read_sources(annotations)
    if not sources:
        raise UserError(f"{', '.join(map(str, annotations))}: no images listed")
    try:
        image_root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{image_root}: cannot create the image root ({err.strerror})") from err
    with progress_bar(len(sources), Tally(), _counts, _done) as update:
        report = download(sources, image_root, annotations, settings, update)
    atomic_write_text(report_path, stable_json(report.model_dump(mode="json")))
    echo(summary_line(report, report_path))
    if report.failed:
        raise UserError(
            f"{report.failed} of {report.total} images could not be fetched; their ids, URLs "
            f"and reasons are in {report_path} (rerun to retry them, or train with --skip-bad)",
            EXIT_CHECK_FAILED,
        )
    return report
