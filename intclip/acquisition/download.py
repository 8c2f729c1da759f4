"""Fetching a dataset's images from their URLs: resumable, polite to the server, verified.

Every image is streamed to `<name>.part` and renamed to its real name only after it decodes
completely, so an interrupted run never leaves half an image under the real name and a rerun
fetches only what is missing. Transient failures (network errors, timeouts, a request past its
total deadline, 408, 429, 5xx) are retried by the project's one backoff policy
(`pipeline.common.retry`), which honours Retry-After; an answer that retrying cannot fix (404,
an HTML page, a body over the size limit once decompressed, bytes that are not an image) fails
that image at once. Bodies are decoded here, a bounded step at a time
(`pipeline.common.bounded_http`), so a gzip bomb is refused at the cap, never inflated. All
requests, retries and redirects included, share one rate limit. No torch here: the command
starts in a moment.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urljoin

import httpx2
import tenacity
from pydantic import BaseModel, Field

from intclip.acquisition.settings import DownloadSettings
from intclip.acquisition.sources import ImageSource
from intclip.data.image_files import decode_problem, outside_root
from intclip.data.shrink import RESIZE_JPEG_QUALITY, shrink
from pipeline.common.bounded_http import (
    ACCEPT_ENCODING,
    ALLOWED_SCHEMES,
    BodyDecoder,
    DeadlinePassed,
    ResponseTooLarge,
    UnsupportedEncoding,
)
from pipeline.common.files import NotARegularFile
from pipeline.common.retry import backoff_policy, is_transient_status, retry_after_from_headers

MAX_REDIRECTS = 5
CHUNK_BYTES = 1 << 16
PART_SUFFIX = ".part"
DEFAULT_REPORT_NAME = "download-report.json"
USER_AGENT = (
    "intclip-download/0.1 (dataset images for research; python-httpx2/"
    f"{httpx2.__version__}; resumable, rate-limited)"
)


Reason = Literal[
    "unsafe filename",
    "unsupported URL",
    "HTTP error",
    "not an image",
    "too large",
    "too many redirects",
    "not decodable",
    "network error",
    "timeout",
    "cannot write",
]


class Failure(BaseModel):
    """One image that could not be fetched, and the last thing that went wrong."""

    id: str
    url: str
    filename: str
    where: str
    reason: Reason
    status: int | None = Field(description="the last HTTP status, if an answer came")
    error: str
    attempts: int = Field(description="requests made for this image")


class DownloadReport(BaseModel):
    """The JSON report written at the end of every run that was not interrupted."""

    image_root: str
    annotations: list[str]
    total: int
    downloaded: int
    skipped: int = Field(description="already present (and decodable): no request made")
    failed: int
    bytes: int = Field(description="bytes received in this run")
    resize_short_side: int | None
    jpeg_quality: int | None = Field(description="quality of the re-encoded JPEGs when resized")
    failures: list[Failure]


class RetryableAnswer(Exception):
    """An HTTP answer worth another try (408, 429, 5xx), with the delay the server asked for."""

    def __init__(self, status: int, retry_after: float | None) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.retry_after = retry_after


class Refused(Exception):
    """A failure that retrying cannot fix."""

    def __init__(self, reason: Reason, error: str, status: int | None = None) -> None:
        super().__init__(error)
        self.reason: Reason = reason
        self.status = status


def is_transient(error: BaseException) -> bool:
    return isinstance(error, RetryableAnswer | httpx2.TransportError)


def requested_delay(error: BaseException) -> float | None:
    return error.retry_after if isinstance(error, RetryableAnswer) else None


def _failure_of(error: Exception, timeout: float) -> tuple[Reason, int | None, str]:
    """(reason, last status, one-line error) of the exception that ended an image's attempts."""
    if isinstance(error, Refused):
        return error.reason, error.status, str(error)
    if isinstance(error, RetryableAnswer):
        return "HTTP error", error.status, str(error)
    if isinstance(error, OSError):
        return "cannot write", None, f"{error.strerror or error}: {error.filename}"
    if isinstance(error, DeadlinePassed):
        return "timeout", None, f"{type(error).__name__}: {error} (--deadline)"
    if isinstance(error, httpx2.TimeoutException):
        return "timeout", None, f"{type(error).__name__}: nothing for {timeout:g} s (--timeout)"
    detail = str(error).splitlines()[0] if str(error) else "connection failed"
    return "network error", None, f"{type(error).__name__}: {detail}"


class RateLimiter:
    """Spaces request starts at least 1/rate seconds apart, across all workers."""

    def __init__(self, rate: float) -> None:
        self._interval = 1.0 / rate
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        loop = asyncio.get_running_loop()
        async with self._lock:
            now = loop.time()
            start = max(now, self._next)
            self._next = start + self._interval
        await asyncio.sleep(start - now)


@dataclass
class Tally:
    """Running counts, for the progress display and the report."""

    downloaded: int = 0
    skipped: int = 0
    failed: int = 0
    bytes: int = 0


Outcome = Literal["downloaded", "skipped", "failed"]


def _check_url(url: str) -> None:
    """Only well-formed http and https URLs are followed (never file:, ftp:, data:, ...)."""
    try:
        parsed = httpx2.URL(url)
    except httpx2.InvalidURL as err:
        raise Refused("unsupported URL", f"invalid URL {url!r}: {err}") from None
    if parsed.scheme not in ALLOWED_SCHEMES or not parsed.host:
        raise Refused("unsupported URL", f"only http and https URLs are fetched, not {url!r}")


def _part_path(target: Path) -> Path:
    return target.with_name(target.name + PART_SUFFIX)


def _store(part: Path, target: Path, resize_short_side: int | None) -> None:
    """Check that the body decodes completely, shrink it if asked, then give it its real name."""
    problem = decode_problem(part)
    if problem is not None:
        kind, detail = problem
        raise Refused("not decodable", f"{kind}: {detail.removeprefix(f'{part}: ')}", 200)
    if resize_short_side is not None:
        shrink(part, part, resize_short_side, target.suffix)
    with open(part, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(part, target)


class Downloader:
    """Fetches `ImageSource`s under one image root with one client, one rate limit and one
    retry policy; `on_progress` is called after every chunk and every finished image."""

    def __init__(
        self,
        image_root: Path,
        settings: DownloadSettings,
        client: httpx2.AsyncClient,
        on_progress: Callable[[Tally], None],
    ) -> None:
        self.root = image_root.resolve()
        self.settings = settings
        self.client = client
        self.limiter = RateLimiter(settings.rate)
        self.tally = Tally()
        self.failures: list[Failure] = []
        self._on_progress = on_progress

    async def run(self, sources: Sequence[ImageSource]) -> None:
        queue: asyncio.Queue[ImageSource] = asyncio.Queue()
        for source in sources:
            queue.put_nowait(source)
        async with asyncio.TaskGroup() as group:
            for _ in range(min(self.settings.concurrency, len(sources))):
                group.create_task(self._worker(queue))

    async def _worker(self, queue: asyncio.Queue[ImageSource]) -> None:
        while not queue.empty():
            source = queue.get_nowait()
            outcome = await self._one(source)
            setattr(self.tally, outcome, getattr(self.tally, outcome) + 1)
            self._on_progress(self.tally)

    async def _one(self, source: ImageSource) -> Outcome:
        attempts = [0]
        try:
            escape = outside_root(self.root, source.filename)
            if escape is not None:
                raise Refused("unsafe filename", f"outside the image root: {escape}")
            _check_url(source.url)
            target = self.root / source.filename
            if target.exists() and not target.is_file():  # a directory, a FIFO...
                kind = NotARegularFile(target, target.stat().st_mode).kind
                raise Refused("unsafe filename", f"{source.filename} is {kind}")
            if await self._present(target):
                return "skipped"
            part = _part_path(target)
            try:
                # One policy object per image: tenacity keeps the state of a call on it.
                policy = backoff_policy(
                    is_transient,
                    requested_delay,
                    initial=self.settings.backoff_initial,
                    maximum=self.settings.backoff_max,
                    attempts=self.settings.max_attempts,
                    kind=tenacity.AsyncRetrying,
                )
                await policy(self._attempt, source.url, part, attempts)
                await asyncio.to_thread(_store, part, target, self.settings.resize_short_side)
            finally:
                part.unlink(missing_ok=True)
        except (Refused, RetryableAnswer, httpx2.TransportError, OSError) as error:
            reason, status, detail = _failure_of(error, self.settings.timeout)
            self.failures.append(
                Failure(
                    id=source.id,
                    url=source.url,
                    filename=source.filename,
                    where=source.where,
                    reason=reason,
                    status=status,
                    error=detail,
                    attempts=attempts[0],
                )
            )
            return "failed"
        return "downloaded"

    async def _present(self, target: Path) -> bool:
        """Already fetched: present and (unless `only_missing`) decoding completely."""
        if not target.is_file():
            return False
        if self.settings.only_missing:
            return True
        return await asyncio.to_thread(decode_problem, target) is None

    async def _attempt(self, url: str, part: Path, attempts: list[int]) -> None:
        """One try: follow redirects (each through the rate limit), stream the body to `part`;
        each request, from connecting to its last byte, within `--deadline`."""
        attempts[0] += 1
        for _ in range(MAX_REDIRECTS + 1):
            await self.limiter.wait()
            try:
                async with asyncio.timeout(self.settings.deadline):
                    redirect = await self._request(url, part)
            except TimeoutError:
                raise DeadlinePassed(self.settings.deadline) from None
            if redirect is None:
                return
            url = redirect
        raise Refused("too many redirects", f"more than {MAX_REDIRECTS} redirects")

    async def _request(self, url: str, part: Path) -> str | None:
        """One request: the URL it redirects to, or None once its body is in `part`."""
        async with self.client.stream("GET", url) as response:
            if response.is_redirect and "location" in response.headers:
                redirect = urljoin(str(response.url), response.headers["location"])
                _check_url(redirect)
                return redirect
            self._accept(response)
            await self._save_body(response, part)
            return None

    def _accept(self, response: httpx2.Response) -> None:
        status = response.status_code
        if is_transient_status(status):
            raise RetryableAnswer(status, retry_after_from_headers(response.headers))
        if status != 200:
            raise Refused("HTTP error", f"HTTP {status}", status)
        media_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type and not media_type.startswith("image/"):
            raise Refused("not an image", f"content type {media_type}", status)
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.settings.max_bytes:
            raise Refused("too large", f"{declared} bytes > --max-bytes", status)

    async def _save_body(self, response: httpx2.Response, part: Path) -> None:
        """The body, decoded here within --max-bytes (raw bytes: httpx would inflate a gzip
        body whole), written to `part`."""
        limit = self.settings.max_bytes
        try:
            decoder = BodyDecoder(response.headers.get("content-encoding", ""), limit)
            part.parent.mkdir(parents=True, exist_ok=True)
            with open(part, "wb") as handle:
                async for chunk in response.aiter_raw(CHUNK_BYTES):
                    handle.write(decoder.decode(chunk))
                    self.tally.bytes += len(chunk)
                    self._on_progress(self.tally)
                handle.write(decoder.flush())
        except ResponseTooLarge:
            raise Refused(
                "too large", f"over {limit} bytes once decoded (--max-bytes)", 200
            ) from None
        except (UnsupportedEncoding, httpx2.DecodingError) as err:
            raise Refused("not decodable", str(err), 200) from None


async def _download(
    sources: Sequence[ImageSource],
    image_root: Path,
    settings: DownloadSettings,
    on_progress: Callable[[Tally], None],
) -> Downloader:
    """Run to the end, or until SIGTERM cancels it (Ctrl-C is asyncio.run's own)."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    trap = task is not None and threading.current_thread() is threading.main_thread()
    if trap:
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        async with httpx2.AsyncClient(
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": ACCEPT_ENCODING},
            timeout=httpx2.Timeout(settings.timeout),
            limits=httpx2.Limits(max_connections=settings.concurrency),
            follow_redirects=False,
        ) as client:
            downloader = Downloader(image_root, settings, client, on_progress)
            await downloader.run(sources)
            return downloader
    finally:
        if trap:
            loop.remove_signal_handler(signal.SIGTERM)


def download(
    sources: Sequence[ImageSource],
    image_root: Path,
    annotations: Sequence[Path],
    settings: DownloadSettings,
    on_progress: Callable[[Tally], None] = lambda tally: None,
) -> DownloadReport:
    """Fetch every source not already present; the report of what could not be fetched.

    SIGTERM ends it like Ctrl-C: in-flight `.part` files are removed and `KeyboardInterrupt`
    is raised, within moments (waits and reads are cancelled, not awaited).
    """
    try:
        done = asyncio.run(_download(sources, image_root, settings, on_progress))
    except asyncio.CancelledError:
        raise KeyboardInterrupt from None
    tally = done.tally
    resized = settings.resize_short_side
    return DownloadReport(
        image_root=str(image_root),
        annotations=[str(path) for path in annotations],
        total=len(sources),
        downloaded=tally.downloaded,
        skipped=tally.skipped,
        failed=tally.failed,
        bytes=tally.bytes,
        resize_short_side=resized,
        jpeg_quality=RESIZE_JPEG_QUALITY if resized is not None else None,
        failures=sorted(done.failures, key=lambda failure: failure.filename),
    )
