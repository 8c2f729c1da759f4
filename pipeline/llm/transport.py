"""The transport: the HTTP client every LLM request goes through, which failures are retried,
how long to wait, how to report them.

Every request has a total deadline (`--timeout`, connecting to the last byte of the answer),
every answer is decoded within `MAX_RESPONSE_BYTES`, and only http and https are followed
(`pipeline.common.bounded_http`). One tenacity policy for every request; the server's
Retry-After is honoured; a failure that retrying cannot fix (a bad key, an unknown model, no
quota, an answer over the cap, a redirect to a file: URL) is reported at once.
"""

from __future__ import annotations

import socket
import sys
import threading
from collections.abc import Callable
from contextlib import nullcontext
from types import ModuleType
from typing import TYPE_CHECKING

from pipeline.common.collector import collector_paused
from pipeline.common.errors import EXIT_BAD_INPUT, EXIT_LLM_FAILURE
from pipeline.common.retry import backoff_policy, is_transient_status, retry_after_from_headers
from pipeline.llm.settings import API_KEY_ENV, LLMSettings, one_line

if TYPE_CHECKING:
    import httpx2
    import tenacity

QUOTA_EXHAUSTED_CODE = "insufficient_quota"
# llama.cpp's C++ server once answered 500 'response_format type must be one of "text" or
# "json_object"'; llama-cpp-python answers 422 or 500 with a validation error on
# response_format.type; others answer 400. Such a refusal is never transient.
FORMAT_REJECTION_STATUS_CODES = frozenset({400, 422, 500})
FORMAT_REJECTION_WORDS = ("response_format", "json_schema")
ERROR_DETAIL_MAX_CHARS = 300
MAX_RESPONSE_BYTES = 8 << 20
"""The largest answer read, once decompressed: a few hundred descriptions would fit."""


def openai_module() -> ModuleType:
    """openai, imported at the first request, not before: its errors exist only once a request
    was made, and a command that asks nothing (`--help`, a locked build) never pays for it.
    The import builds thousands of pydantic models and frees nothing: its collections would cost
    a fifth of it and find no garbage (`collector_paused`)."""
    with nullcontext() if "openai" in sys.modules else collector_paused():
        import openai  # waits, in any thread, until another thread's import of it is done
    return openai


def http_client(settings: LLMSettings) -> httpx2.Client:
    """The HTTP client of the openai client: every request within `settings.timeout` seconds
    in all, answers decoded up to MAX_RESPONSE_BYTES, http and https only, redirects followed
    (each one a request of its own, bounded alike)."""
    import httpx2

    from pipeline.common.bounded_http import BoundedTransport

    return httpx2.Client(
        transport=BoundedTransport(settings.timeout, MAX_RESPONSE_BYTES),
        timeout=settings.timeout,
        follow_redirects=True,
        trust_env=False,  # the transport takes the environment's proxy itself, bounded alike
    )


def bounds_refused(error: BaseException) -> bool:
    """An answer the bounds refused: too large once decompressed, or in an encoding not asked
    for. A retry would get the same."""
    from pipeline.common.bounded_http import ResponseTooLarge, UnsupportedEncoding

    return isinstance(error, ResponseTooLarge | UnsupportedEncoding)


def is_redirect_refused(error: BaseException) -> bool:
    """The server redirected to a URL that is not http or https (a file: URL...)."""
    from pipeline.common.bounded_http import NotHttpURL

    return isinstance(error, NotHttpURL)


def retry_after_seconds(error: BaseException) -> float | None:
    """The delay the server asked for, if the error is an HTTP answer that says so."""
    if not isinstance(error, openai_module().APIStatusError):
        return None
    return retry_after_from_headers(error.response.headers)


def rejects_response_format(error: BaseException) -> bool:
    """Whether the server refused the structured-output request itself, not the moment."""
    if not isinstance(error, openai_module().APIStatusError):
        return False
    message = error.message.lower()
    return error.status_code in FORMAT_REJECTION_STATUS_CODES and any(
        word in message for word in FORMAT_REJECTION_WORDS
    )


def is_quota_exhausted(error: BaseException) -> bool:
    return isinstance(error, openai_module().APIStatusError) and error.code == QUOTA_EXHAUSTED_CODE


def is_unreachable(error: BaseException) -> bool:
    """Nothing listens at the address, or the host name does not resolve: a wrong --base-url,
    which no retry fixes, so the whole build stops at the first request."""
    if not isinstance(error, openai_module().APIConnectionError) or isinstance(
        error, openai_module().APITimeoutError
    ):
        return False
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError | socket.gaierror):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def is_transient(error: BaseException) -> bool:
    """Worth another try: network trouble, timeouts, 408, 429 (unless out of quota) and 5xx."""
    if isinstance(error, openai_module().APIConnectionError):
        return not is_unreachable(error)
    if not isinstance(error, openai_module().APIStatusError):
        return False
    if is_quota_exhausted(error) or rejects_response_format(error):
        return False
    return is_transient_status(error.status_code)


def transport_policy(settings: LLMSettings, cancelled: threading.Event) -> tenacity.Retrying:
    """The one retry policy (`pipeline.common.retry`) with the LLM's transient errors and settings:
    up to `max_transport_attempts` requests, backoff from `backoff_initial` to `backoff_max`;
    once `cancelled` is set (Ctrl-C, SIGTERM) a wait ends at once and nothing more is sent."""
    return backoff_policy(
        is_transient,
        retry_after_seconds,
        initial=settings.backoff_initial,
        maximum=settings.backoff_max,
        attempts=settings.max_transport_attempts,
        cancelled=cancelled,
    )


def root_cause(error: BaseException) -> str:
    """The innermost reason, e.g. `[Errno 111] Connection refused`."""
    while (error.__cause__ or error.__context__) is not None:
        error = error.__cause__ or error.__context__
    return short_line(str(error))


def short_line(text: str) -> str:
    """One line of bounded length, for text a server chose."""
    line = one_line(text)
    if len(line) > ERROR_DETAIL_MAX_CHARS:
        return line[: ERROR_DETAIL_MAX_CHARS - 3] + "..."
    return line


def error_detail(error: BaseException) -> str:
    """The server's own words about the failure, or the error's own when it has none."""
    body = getattr(error, "body", None)
    message = body.get("message") if isinstance(body, dict) else None
    return short_line(str(message or getattr(error, "message", None) or error))


def status_is(status_code: int) -> Callable[[BaseException], bool]:
    return lambda error: getattr(error, "status_code", None) == status_code


def is_status_error(error: BaseException) -> bool:
    return isinstance(error, openai_module().APIStatusError)


def is_timeout(error: BaseException) -> bool:
    return isinstance(error, openai_module().APITimeoutError)


def is_connection_error(error: BaseException) -> bool:
    return isinstance(error, openai_module().APIConnectionError)


# The first rule that matches names the failure and its exit code: configuration mistakes exit 2,
# failures of the server after every retry exit 3.
FAILURE_RULES: tuple[tuple[Callable[[BaseException], bool], str, int], ...] = (
    (is_quota_exhausted, "quota exhausted (insufficient_quota): {detail}", EXIT_BAD_INPUT),
    (
        rejects_response_format,
        "the server rejects response_format {mode} ({status}): {detail}",
        EXIT_BAD_INPUT,
    ),
    (
        is_redirect_refused,
        "{base_url} answered with {detail}; check --base-url or OPENAI_BASE_URL",
        EXIT_BAD_INPUT,
    ),
    (bounds_refused, "the answer of {base_url} was refused: {detail}", EXIT_LLM_FAILURE),
    (
        is_timeout,
        "no answer from {base_url} within {timeout:g} s, {attempts} attempts (--timeout bounds "
        "each request in all, from connecting to the last byte of the answer)",
        EXIT_LLM_FAILURE,
    ),
    (
        is_unreachable,
        "nothing answers at {base_url} ({cause}): check --base-url or OPENAI_BASE_URL",
        EXIT_BAD_INPUT,
    ),
    (
        is_connection_error,
        "cannot reach {base_url} after {attempts} attempts: {detail}",
        EXIT_LLM_FAILURE,
    ),
    (
        status_is(401),
        f"authentication failed (401): check {API_KEY_ENV}: {{detail}}",
        EXIT_BAD_INPUT,
    ),
    (status_is(403), "permission denied (403) for model {model!r}: {detail}", EXIT_BAD_INPUT),
    (status_is(404), "model {model!r} not found at {base_url} (404): {detail}", EXIT_BAD_INPUT),
    (status_is(429), "rate limited (429) after {attempts} attempts: {detail}", EXIT_LLM_FAILURE),
    (
        is_transient,
        "LLM server error {status} after {attempts} attempts: {detail}",
        EXIT_LLM_FAILURE,
    ),
    (is_status_error, "the server rejected the request ({status}): {detail}", EXIT_BAD_INPUT),
)
UNCLASSIFIED_FAILURE = ("LLM request failed: {detail}", EXIT_LLM_FAILURE)
