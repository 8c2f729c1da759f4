"""Structured answers from any OpenAI-compatible server: validated, re-asked, retried, cached.

The description builder asks one question per class, possibly from several threads. Each question
ends as one validated pydantic answer or one error line, after a bounded number of HTTP requests:
transient failures go through a single tenacity policy, invalid answers are sent back to the model
a bounded number of times, and validated answers are cached on disk so a rerun sends nothing.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ValidationError

from pipeline.common.errors import EXIT_LLM_FAILURE
from pipeline.llm.cache import LLMCache
from pipeline.llm.settings import LLMError, LLMSettings, describe_validation_error, one_line
from pipeline.llm.transport import (
    FAILURE_RULES,
    UNCLASSIFIED_FAILURE,
    bounds_refused,
    error_detail,
    http_client,
    is_redirect_refused,
    openai_module,
    rejects_response_format,
    root_cause,
    short_line,
    transport_policy,
)

if TYPE_CHECKING:  # imported by the first request: planning, or answering from the cache, never
    import openai

REASK_TEMPLATE = (
    "Your previous answer was rejected: {error}. "
    "Answer again with the complete JSON object, following every rule."
)

REJECTED_ANSWER_CHARS = 2000  # a runaway answer must not overflow a small model's context

RequestMode = Literal["json_schema", "json_object"]
ChatMessage = dict[str, str]
AnswerT = TypeVar("AnswerT", bound=BaseModel)


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
    """The turns that show the model its rejected answer (its start, if it ran on) and why."""
    return [
        {"role": "assistant", "content": (reply.refusal or reply.content)[:REJECTED_ANSWER_CHARS]},
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
        self._openai_client: openai.OpenAI | None = None
        self._client_lock = threading.Lock()
        self._cancelled = threading.Event()
        self._requested = threading.Event()
        self._transport = transport_policy(settings, self._cancelled)
        self._mode_lock = threading.Lock()
        self._mode: RequestMode = (
            "json_schema" if settings.response_mode == "auto" else settings.response_mode
        )

    @property
    def _openai(self) -> openai.OpenAI:
        """The HTTP client, made at the first request: answering from the cache, or planning,
        needs no API key."""
        openai = openai_module()
        with self._client_lock:
            if self._openai_client is None:
                self._openai_client = openai.OpenAI(
                    api_key=self.settings.client_api_key(),
                    base_url=self.settings.base_url,
                    max_retries=0,
                    timeout=self.settings.timeout,
                    http_client=http_client(self.settings),
                )
            return self._openai_client

    @property
    def base_url(self) -> str:
        return str(self._openai.base_url).rstrip("/")

    @property
    def response_mode(self) -> RequestMode:
        """The mode requests use now: auto starts with json_schema and may fall back."""
        return self._mode

    def wait_for_a_request(self, timeout: float) -> bool:
        """Whether a request went out within `timeout` seconds: work that no request needs
        can then use the CPU while the server thinks, instead of delaying the first request."""
        return self._requested.wait(timeout)

    def cancel(self) -> None:
        """Stop asking, from any thread: waits between retries end, and no request starts."""
        self._cancelled.set()

    def close(self) -> None:
        """Release the HTTP connections (`contextlib.closing` works)."""
        with self._client_lock:
            if self._openai_client is not None:
                self._openai_client.close()

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
        the error goes back to the model, at most `max_answer_attempts` answers in all. Only the
        latest rejected answer is shown, so the conversation stays bounded for small contexts.
        Raises LLMError, whose message is one line the caller may prefix with what was asked.
        """
        request = self.request_summary(messages, response_model)
        cached = self._from_cache(request, response_model, check)
        if cached is not None:
            return LLMAnswer(value=cached, from_cache=True, requests=0)
        conversation = list(messages)
        requests = 0
        error = ""
        for attempt in range(self.settings.max_answer_attempts):
            body, sent = self._send(conversation, response_model, self._params(attempt))
            requests += sent
            reply = _reply_of(body)
            try:
                value = _validated(reply, response_model, check)
            except _InvalidAnswer as invalid:
                error = str(invalid)
                conversation = [*messages, *_reasked(reply, error)]
                continue
            if self._cache is not None:
                self._cache.store(request, value.model_dump(mode="json"))
            return LLMAnswer(value=value, from_cache=False, requests=requests)
        raise LLMError(
            f"no valid answer after {self.settings.max_answer_attempts} attempts: {error}",
            EXIT_LLM_FAILURE,
        )

    def _params(self, attempt: int) -> dict[str, Any]:
        """The sampling parameters of answer number `attempt` (from 0): a re-ask gets the next
        seed, else a deterministic server that repeats its answer verbatim (llama.cpp with a
        fixed seed does) would be shown the same conversation and repeat it again."""
        params = dict(self.settings.sampling_params)
        if "seed" in params:
            params["seed"] += attempt
        return params

    def _send(
        self,
        conversation: list[ChatMessage],
        response_model: type[BaseModel],
        params: dict[str, Any],
    ) -> tuple[str, int]:
        """One reply body through the retry policy (and the auto fallback), with requests sent."""
        openai = openai_module()
        requests = 0
        while True:
            mode = self._mode
            policy = self._transport.copy()
            try:
                body = policy(self._post, mode, conversation, response_model, params)
            except openai.APIError as error:
                attempts = policy.statistics["attempt_number"]
                requests += attempts
                if not self._fell_back(mode, error):
                    raise self._failure(error, mode, attempts) from error
                continue
            except Exception as error:  # the transport's bounds, which openai passes on
                if not (bounds_refused(error) or is_redirect_refused(error)):
                    raise
                attempts = policy.statistics["attempt_number"]
                raise self._failure(error, mode, attempts) from error
            return body, requests + policy.statistics["attempt_number"]

    def _post(
        self,
        mode: RequestMode,
        conversation: list[ChatMessage],
        response_model: type[BaseModel],
        params: dict[str, Any],
    ) -> str:
        """One HTTP request, returning the raw body.

        `parse` builds OpenAI's strict json_schema request from the pydantic model; the raw body is
        read instead of its parsed result so that an invalid answer can be shown to the model.
        """
        if self._cancelled.is_set():
            raise LLMError("cancelled before the request was sent", EXIT_LLM_FAILURE)
        completions = self._openai.chat.completions.with_raw_response
        self._requested.set()
        request: dict[str, Any] = {
            "model": self.settings.model,
            "messages": conversation,
            **params,
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

    def _failure(self, error: BaseException, mode: RequestMode, attempts: int) -> LLMError:
        """The one-line error for a request that failed for good; never shows the key."""
        fields = {
            "attempts": attempts,
            "base_url": self.base_url,
            "cause": root_cause(error),
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
