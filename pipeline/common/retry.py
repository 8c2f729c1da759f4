"""The one retry policy for HTTP requests: jittered exponential backoff that honours Retry-After.

Both the LLM client and the image downloader retry through `backoff_policy`; each says which of
its errors are worth another try and where an error carries the server's Retry-After.
"""

from __future__ import annotations

import email.utils
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TypeVar

import tenacity

Policy = TypeVar("Policy", tenacity.Retrying, tenacity.AsyncRetrying)
TRANSIENT_STATUS_CODES = frozenset({408, 429})


def is_transient_status(status_code: int) -> bool:
    """An HTTP status worth another try: 408, 429 and every 5xx."""
    return status_code in TRANSIENT_STATUS_CODES or status_code >= 500


def retry_after_from_headers(headers: Mapping[str, str]) -> float | None:
    """The delay a server asked for in `retry-after-ms`, or `Retry-After` (seconds or a date)."""
    try:
        return max(0.0, float(headers["retry-after-ms"]) / 1000)
    except (KeyError, ValueError):
        pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def backoff_policy(
    retry_if: Callable[[BaseException], bool],
    retry_after: Callable[[BaseException], float | None],
    *,
    initial: float,
    maximum: float,
    attempts: int,
    kind: type[Policy] = tenacity.Retrying,
    cancelled: threading.Event | None = None,
) -> Policy:
    """Retry errors that `retry_if` accepts, at most `attempts` tries in all, re-raising the last.

    Waits what the server's Retry-After asks (`retry_after` of the error), up to `maximum`, else a
    jittered exponential backoff from `initial` doubling up to `maximum`. `kind` is
    `tenacity.AsyncRetrying` for coroutines, whose waits a cancellation interrupts; threads
    pass `cancelled` instead: once it is set (Ctrl-C, SIGTERM) a wait ends at once and no
    further attempt is made.
    """
    backoff = tenacity.wait_exponential_jitter(multiplier=initial, max=maximum, jitter=initial)

    def wait(state: tenacity.RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        asked = retry_after(error) if error is not None else None
        return backoff(state) if asked is None else min(asked, maximum)

    stop = tenacity.stop_after_attempt(attempts)
    sleep = {}
    if cancelled is not None:
        stop = stop | tenacity.stop_when_event_set(cancelled)
        sleep = {"sleep": cancelled.wait}
    return kind(
        retry=tenacity.retry_if_exception(retry_if), wait=wait, stop=stop, reraise=True, **sleep
    )
