"""Structured answers from any OpenAI-compatible server: validated, re-asked, retried, cached.

The description builder asks one question per class, possibly from several threads. Each question
ends as one validated pydantic answer or one error line, after a bounded number of HTTP requests:
transient failures go through a single tenacity policy, invalid answers are sent back to the model
a bounded number of times, and validated answers are cached on disk so a rerun sends nothing.
"""

from __future__ import annotations

import email.utils
import ipaddress
import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import urlsplit

import openai
import tenacity
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from pipeline.errors import EXIT_BAD_INPUT, EXIT_LLM_FAILURE, UserError
from pipeline.llm_cache import LLMCache

API_KEY_ENV = "OPENAI_API_KEY"
BASE_URL_ENV = "OPENAI_BASE_URL"
MODEL_ENV = "INTCLIP_LLM_MODEL"
SETTINGS_FROM_ENV = {"model": MODEL_ENV, "base_url": BASE_URL_ENV, "api_key": API_KEY_ENV}
# Keyless local servers (llama.cpp, vLLM, Ollama) still get a bearer token: the client insists.
LOCAL_SERVER_API_KEY = "not-needed"
QUOTA_EXHAUSTED_CODE = "insufficient_quota"
TRANSIENT_STATUS_CODES = frozenset({408, 429})
# llama.cpp's C++ server once answered 500 'response_format type must be one of "text" or
# "json_object"'; llama-cpp-python answers 422 or 500 with a validation error on
# response_format.type; others answer 400. Such a refusal is never transient.
FORMAT_REJECTION_STATUS_CODES = frozenset({400, 422, 500})
FORMAT_REJECTION_WORDS = ("response_format", "json_schema")
ERROR_DETAIL_MAX_CHARS = 300
REASK_TEMPLATE = (
    "Your previous answer was rejected: {error}. "
    "Answer again with the complete JSON object, following every rule."
)

ResponseMode = Literal["auto", "json_schema", "json_object"]
RequestMode = Literal["json_schema", "json_object"]
ChatMessage = dict[str, str]
AnswerT = TypeVar("AnswerT", bound=BaseModel)


class LLMError(UserError):
    """A request that failed for good: exit 2 for configuration, 3 for the server or the model."""


def one_line(text: str) -> str:
    """Collapse newlines and runs of spaces, so an error stays a single line."""
    return " ".join(text.split())


def describe_validation_error(error: ValidationError) -> str:
    """Pydantic's errors as `location: message; ...`, without the (possibly secret) inputs."""
    return "; ".join(
        f"{'.'.join(str(part) for part in item['loc']) or 'answer'}: {one_line(item['msg'])}"
        for item in error.errors(include_url=False)
    )


def is_loopback(base_url: str | None) -> bool:
    """Whether the server runs on this machine, where a key is usually not needed."""
    host = urlsplit(base_url).hostname if base_url else None
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class LLMSettings(BaseModel):
    """Which server and model to ask, how to sample, and how hard to insist."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(min_length=1)
    base_url: str | None = None
    api_key: SecretStr | None = None
    temperature: float = Field(default=0.7, ge=0, le=2)
    seed: int | None = None
    timeout: float = Field(default=60.0, gt=0, description="seconds per HTTP request")
    response_mode: ResponseMode = "auto"
    max_answer_attempts: int = Field(default=3, ge=1, description="answers asked per request")
    max_transport_attempts: int = Field(default=6, ge=1, description="HTTP tries per answer")
    backoff_initial: float = Field(default=1.0, ge=0, description="first retry delay, seconds")
    backoff_max: float = Field(default=30.0, ge=0, description="longest retry delay, seconds")

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, base_url: str | None) -> str | None:
        if base_url is not None and urlsplit(base_url).scheme not in ("http", "https"):
            raise ValueError("must be an http:// or https:// URL")
        return base_url

    @classmethod
    def from_env(cls, **overrides: Any) -> LLMSettings:
        """Settings from the environment variables, overridden by every option that is not None."""
        values = {name: os.environ.get(variable) for name, variable in SETTINGS_FROM_ENV.items()}
        values.update(overrides)
        given = {name: value for name, value in values.items() if value not in (None, "")}
        if "model" not in given:
            raise UserError(f"no LLM model given: pass --model or set {MODEL_ENV}")
        try:
            return cls(**given)
        except ValidationError as err:
            raise UserError(f"invalid LLM settings: {describe_validation_error(err)}") from None

    @property
    def sampling_params(self) -> dict[str, Any]:
        """What changes the answer besides the messages: sent with each request, part of the key."""
        seed = {} if self.seed is None else {"seed": self.seed}
        return {"temperature": self.temperature, **seed}

    def client_api_key(self) -> str:
        """The key to send: a loopback server may need none, any other server must get one."""
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        if is_loopback(self.base_url):
            return LOCAL_SERVER_API_KEY
        raise LLMError(
            f"no API key: set {API_KEY_ENV} (a server on localhost, given by --base-url or "
            f"{BASE_URL_ENV}, needs none)",
            EXIT_BAD_INPUT,
        )


def retry_after_seconds(error: BaseException) -> float | None:
    """The delay the server asked for in `retry-after-ms`, or `Retry-After` (seconds or a date)."""
    if not isinstance(error, openai.APIStatusError):
        return None
    headers = error.response.headers
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


def rejects_response_format(error: BaseException) -> bool:
    """Whether the server refused the structured-output request itself, not the moment."""
    if not isinstance(error, openai.APIStatusError):
        return False
    message = error.message.lower()
    return error.status_code in FORMAT_REJECTION_STATUS_CODES and any(
        word in message for word in FORMAT_REJECTION_WORDS
    )


def is_quota_exhausted(error: BaseException) -> bool:
    return isinstance(error, openai.APIStatusError) and error.code == QUOTA_EXHAUSTED_CODE


def is_transient(error: BaseException) -> bool:
    """Worth another try: network trouble, timeouts, 408, 429 (unless out of quota) and 5xx."""
    if isinstance(error, openai.APIConnectionError):
        return True
    if not isinstance(error, openai.APIStatusError):
        return False
    if is_quota_exhausted(error) or rejects_response_format(error):
        return False
    return error.status_code in TRANSIENT_STATUS_CODES or error.status_code >= 500


def transport_policy(settings: LLMSettings) -> tenacity.Retrying:
    """The one retry policy for HTTP requests.

    Waits what the server's Retry-After asks, up to `backoff_max`, else a jittered exponential
    backoff from `backoff_initial` doubling up to `backoff_max`; gives up after
    `max_transport_attempts` requests and re-raises the last error.
    """
    backoff = tenacity.wait_exponential_jitter(
        multiplier=settings.backoff_initial,
        max=settings.backoff_max,
        jitter=settings.backoff_initial,
    )

    def wait(state: tenacity.RetryCallState) -> float:
        asked = retry_after_seconds(state.outcome.exception()) if state.outcome else None
        return backoff(state) if asked is None else min(asked, settings.backoff_max)

    return tenacity.Retrying(
        retry=tenacity.retry_if_exception(is_transient),
        wait=wait,
        stop=tenacity.stop_after_attempt(settings.max_transport_attempts),
        reraise=True,
    )


def short_line(text: str) -> str:
    """One line of bounded length, for text a server chose."""
    line = one_line(text)
    if len(line) > ERROR_DETAIL_MAX_CHARS:
        return line[: ERROR_DETAIL_MAX_CHARS - 3] + "..."
    return line


def error_detail(error: openai.APIError) -> str:
    """The server's own words about the failure."""
    body = error.body
    message = body.get("message") if isinstance(body, dict) else None
    return short_line(str(message or error.message))


def status_is(status_code: int) -> Callable[[BaseException], bool]:
    return lambda error: getattr(error, "status_code", None) == status_code


def is_status_error(error: BaseException) -> bool:
    return isinstance(error, openai.APIStatusError)


def is_timeout(error: BaseException) -> bool:
    return isinstance(error, openai.APITimeoutError)


def is_connection_error(error: BaseException) -> bool:
    return isinstance(error, openai.APIConnectionError)


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
        is_timeout,
        "no answer from {base_url} within {timeout:g} s, {attempts} attempts",
        EXIT_LLM_FAILURE,
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


@dataclass(frozen=True)
class LLMAnswer(Generic[AnswerT]):
    """A validated answer, and what it cost."""

    value: AnswerT
    from_cache: bool
    requests: int


@dataclass(frozen=True)
class _Reply:
    """What the model said: its JSON text, or a refusal."""

    content: str
    refusal: str | None


class _InvalidAnswer(Exception):
    """The model answered, but not acceptably; the message is shown to it when asking again."""


def _reply_of(body: str) -> _Reply:
    """The first choice of a chat.completion body."""
    try:
        message = json.loads(body)["choices"][0]["message"]
        return _Reply(content=message.get("content") or "", refusal=message.get("refusal"))
    except (ValueError, LookupError, TypeError, AttributeError):
        raise LLMError(
            f"the server's reply is not a chat completion: {short_line(body)}",
            EXIT_LLM_FAILURE,
        ) from None


def _validated(
    reply: _Reply, response_model: type[AnswerT], check: Callable[[AnswerT], None] | None
) -> AnswerT:
    """Parse and check an answer, or say in one line what is wrong with it."""
    if reply.refusal:
        raise _InvalidAnswer(f"the answer was a refusal: {one_line(reply.refusal)}")
    if not reply.content.strip():
        raise _InvalidAnswer("the answer was empty")
    try:
        value = response_model.model_validate_json(reply.content)
        if check is not None:
            check(value)
    except ValidationError as err:
        raise _InvalidAnswer(describe_validation_error(err)) from err
    except ValueError as err:
        raise _InvalidAnswer(one_line(str(err))) from err
    return value


def _reasked(reply: _Reply, error: str) -> list[ChatMessage]:
    """The turns that show the model its rejected answer and why it was rejected."""
    return [
        {"role": "assistant", "content": reply.refusal or reply.content},
        {"role": "user", "content": REASK_TEMPLATE.format(error=error)},
    ]


class LLMClient:
    """Asks an OpenAI-compatible server for structured answers; share one between threads."""

    def __init__(
        self,
        settings: LLMSettings,
        cache: LLMCache | None = None,
        refresh: bool = False,
        notify: Callable[[str], None] | None = None,
    ) -> None:
        """`refresh` ignores cached answers but still stores new ones.

        `notify` hears, once, that auto mode fell back to json_object, for the user to see.
        """
        self.settings = settings
        self._cache = cache
        self._refresh = refresh
        self._notify = notify
        self._openai = openai.OpenAI(
            api_key=settings.client_api_key(),
            base_url=settings.base_url,
            max_retries=0,
            timeout=settings.timeout,
        )
        self._transport = transport_policy(settings)
        self._mode_lock = threading.Lock()
        self._mode: RequestMode = (
            "json_schema" if settings.response_mode == "auto" else settings.response_mode
        )

    @property
    def base_url(self) -> str:
        return str(self._openai.base_url).rstrip("/")

    @property
    def response_mode(self) -> RequestMode:
        """The mode requests use now: auto starts with json_schema and may fall back."""
        return self._mode

    def close(self) -> None:
        """Release the HTTP connections (`contextlib.closing` works)."""
        self._openai.close()

    def request_summary(
        self, messages: list[ChatMessage], response_model: type[BaseModel]
    ) -> dict[str, Any]:
        """Everything an answer depends on, hence the cache key.

        The base URL and the API key are left out: the same model gives the same answers on any
        server that hosts it, and the key is a secret.
        """
        return {
            "model": self.settings.model,
            "messages": messages,
            "params": self.settings.sampling_params,
            "response_schema": response_model.model_json_schema(),
        }

    def cached(
        self,
        messages: list[ChatMessage],
        response_model: type[AnswerT],
        check: Callable[[AnswerT], None] | None = None,
    ) -> AnswerT | None:
        """The answer `ask` would take from the cache without sending anything, else None."""
        return self._from_cache(
            self.request_summary(messages, response_model), response_model, check
        )

    def _from_cache(
        self,
        request: dict[str, Any],
        response_model: type[AnswerT],
        check: Callable[[AnswerT], None] | None,
    ) -> AnswerT | None:
        """A stored answer that still validates and passes `check`; never one when refreshing."""
        if self._cache is None or self._refresh:
            return None
        stored = self._cache.load(request)
        if stored is None:
            return None
        try:
            value = response_model.model_validate(stored)
            if check is not None:
                check(value)
        except ValueError:
            return None
        return value

    def ask(
        self,
        messages: list[ChatMessage],
        response_model: type[AnswerT],
        check: Callable[[AnswerT], None] | None = None,
    ) -> LLMAnswer[AnswerT]:
        """A validated answer to `messages`, from the cache or the server.

        `check` raises ValueError to reject an answer that parses but breaks the caller's rules;
        the error goes back to the model, at most `max_answer_attempts` answers in all. Raises
        LLMError, whose message is one line the caller may prefix with what was asked.
        """
        request = self.request_summary(messages, response_model)
        cached = self._from_cache(request, response_model, check)
        if cached is not None:
            return LLMAnswer(value=cached, from_cache=True, requests=0)
        conversation = list(messages)
        requests = 0
        error = ""
        for _ in range(self.settings.max_answer_attempts):
            body, sent = self._send(conversation, response_model)
            requests += sent
            reply = _reply_of(body)
            try:
                value = _validated(reply, response_model, check)
            except _InvalidAnswer as invalid:
                error = str(invalid)
                conversation += _reasked(reply, error)
                continue
            if self._cache is not None:
                self._cache.store(request, value.model_dump(mode="json"))
            return LLMAnswer(value=value, from_cache=False, requests=requests)
        raise LLMError(
            f"no valid answer after {self.settings.max_answer_attempts} attempts: {error}",
            EXIT_LLM_FAILURE,
        )

    def _send(
        self, conversation: list[ChatMessage], response_model: type[BaseModel]
    ) -> tuple[str, int]:
        """One reply body through the retry policy (and the auto fallback), with requests sent."""
        requests = 0
        while True:
            mode = self._mode
            policy = self._transport.copy()
            try:
                body = policy(self._post, mode, conversation, response_model)
            except openai.APIError as error:
                attempts = policy.statistics["attempt_number"]
                requests += attempts
                if not self._fell_back(mode, error):
                    raise self._failure(error, mode, attempts) from error
                continue
            return body, requests + policy.statistics["attempt_number"]

    def _post(
        self, mode: RequestMode, conversation: list[ChatMessage], response_model: type[BaseModel]
    ) -> str:
        """One HTTP request, returning the raw body.

        `parse` builds OpenAI's strict json_schema request from the pydantic model; the raw body is
        read instead of its parsed result so that an invalid answer can be shown to the model.
        """
        completions = self._openai.chat.completions.with_raw_response
        request: dict[str, Any] = {
            "model": self.settings.model,
            "messages": conversation,
            **self.settings.sampling_params,
        }
        if mode == "json_schema":
            raw = completions.parse(response_format=response_model, **request)
        else:
            schema = response_model.model_json_schema()
            raw = completions.create(
                response_format={"type": "json_object", "schema": schema}, **request
            )
        return raw.text

    def _fell_back(self, mode: RequestMode, error: openai.APIError) -> bool:
        """Whether auto mode moved to json_object, for this and every later request, because the
        server rejected json_schema; `notify` hears it once."""
        if not (
            self.settings.response_mode == "auto"
            and mode == "json_schema"
            and rejects_response_format(error)
        ):
            return False
        with self._mode_lock:
            switched = self._mode == "json_schema"
            self._mode = "json_object"
        if switched and self._notify is not None:
            self._notify(
                f"{self.base_url} rejects json_schema response_format ({error_detail(error)}); "
                "using json_object mode, with the same validation, from now on"
            )
        return True

    def _failure(self, error: openai.APIError, mode: RequestMode, attempts: int) -> LLMError:
        """The one-line error for a request that failed for good; never shows the key."""
        fields = {
            "attempts": attempts,
            "base_url": self.base_url,
            "detail": error_detail(error),
            "mode": mode,
            "model": self.settings.model,
            "status": getattr(error, "status_code", None),
            "timeout": self.settings.timeout,
        }
        template, exit_code = next(
            (
                (template, exit_code)
                for matches, template, exit_code in FAILURE_RULES
                if matches(error)
            ),
            UNCLASSIFIED_FAILURE,
        )
        message = template.format(**fields)
        if self.settings.api_key is not None:
            message = message.replace(self.settings.api_key.get_secret_value(), "***")
        return LLMError(message, exit_code)
