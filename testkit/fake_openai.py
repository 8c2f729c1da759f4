"""A loopback OpenAI-compatible chat server for tests: real sockets, scripted answers and faults.

The real `openai` client talks to it over HTTP, so tests exercise timeouts, status codes and
headers exactly as a remote server would produce them:

    with FakeOpenAI() as server:
        server.enqueue(rate_limited(retry_after="0.3"), server_error())
        ...  # point the client at server.base_url
        assert server.request_count == 3

Each request consumes the next queued fault, if any; otherwise `responder(request_json)` gives the
answer's content. The default responder answers a descriptions request with as many distinct
descriptions as the request's JSON schema asks for.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal

from testkit.hostile_http import head, trickle

CHAT_PATH = "/v1/chat/completions"
MODELS_PATH = "/v1/models"
DEFAULT_DESCRIPTION_COUNT = 5
SHUTDOWN_POLL_S = 0.02  # how soon close() stops the serving thread
TEST_API_KEY = "sk-test-a1b2c3d4e5f6-never-stored"  # what tests check never reaches a file or log
VOCABULARY = (
    *("people", "smiling", "together", "outdoors", "while", "holding", "bright", "flowers"),
    *("near", "a", "quiet", "lake", "at", "sunset", "under", "tall", "green", "trees"),
    *("beside", "their", "small", "wooden", "house", "with", "friends", "family", "children"),
)
# What llama-cpp-python's server says about {"type": "json_schema"}: only text and json_object.
JSON_SCHEMA_REJECTION = (
    "1 validation error for CreateChatCompletionRequest\n"
    "response_format.type\n"
    "  Input should be 'text' or 'json_object' "
    "[type=literal_error, input_value='json_schema', input_type=str]"
)

Responder = Callable[[dict[str, Any]], str]
Response = tuple[int, bytes, Mapping[str, str]]  # status, body, extra headers
Writer = Callable[[BaseHTTPRequestHandler, threading.Event], None]  # writes the answer itself


def json_response(status: int, payload: dict[str, Any], headers: Mapping[str, str]) -> Response:
    return status, json.dumps(payload).encode(), headers


def completion_response(
    request: dict[str, Any], content: str | None, refusal: str | None
) -> Response:
    """A chat.completion as OpenAI returns it, with one choice."""
    completion = {
        "id": f"chatcmpl-fake-{uuid.uuid4().hex[:12]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.get("model", ""),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": refusal},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    }
    return json_response(200, completion, {})


@dataclass(frozen=True)
class ErrorReply:
    """An OpenAI-style error response: `{"error": {"message", "type", "param", "code"}}`."""

    status: int
    message: str
    type: str = "server_error"
    code: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    def respond(self, request: dict[str, Any], responder: Responder) -> Response:
        error = {"message": self.message, "type": self.type, "param": None, "code": self.code}
        return json_response(self.status, {"error": error}, self.headers)


@dataclass(frozen=True)
class Content:
    """An answer whose content is this text, verbatim: malformed JSON, rule-breaking JSON."""

    text: str

    def respond(self, request: dict[str, Any], responder: Responder) -> Response:
        return completion_response(request, self.text, None)


@dataclass(frozen=True)
class Refusal:
    """An answer with null content and this refusal, as OpenAI's structured outputs refuse."""

    text: str

    def respond(self, request: dict[str, Any], responder: Responder) -> Response:
        return completion_response(request, None, self.text)


@dataclass(frozen=True)
class Body:
    """A 200 response whose body is this text, verbatim: a server that is not OpenAI-compatible."""

    text: str

    def respond(self, request: dict[str, Any], responder: Responder) -> Response:
        return 200, self.text.encode(), {}


@dataclass(frozen=True)
class Hang:
    """Wait this long (past the client's timeout, usually), then answer with the responder."""

    seconds: float

    def respond(self, request: dict[str, Any], responder: Responder) -> Response:
        time.sleep(self.seconds)
        return completion_response(request, responder(request), None)


@dataclass(frozen=True)
class Trickle:
    """The normal answer, one byte every `delay_s` seconds: from its status line on
    (`part="headers"`), or its body only; bytes keep coming, so no idle timeout ever fires."""

    delay_s: float
    part: Literal["headers", "body"] = "body"

    def respond(self, request: dict[str, Any], responder: Responder) -> Writer:
        _, data, _ = completion_response(request, responder(request), None)
        headers = head(
            200, "OK", {"Content-Type": "application/json", "Content-Length": str(len(data))}
        )

        def write(handler: BaseHTTPRequestHandler, closing: threading.Event) -> None:
            if self.part == "body":
                handler.wfile.write(headers)
            trickle(
                handler, (headers if self.part == "headers" else b"") + data, self.delay_s, closing
            )

        return write


@dataclass(frozen=True)
class Encoded:
    """A 200 answer whose body is `data` as given, declared as `encoding` (a gzip bomb...)."""

    data: bytes
    encoding: str = "gzip"

    def respond(self, request: dict[str, Any], responder: Responder) -> Response:
        return 200, self.data, {"Content-Encoding": self.encoding}


@dataclass(frozen=True)
class Redirect:
    """A redirect to `location` (a file: URL...)."""

    location: str
    status: int = 307

    def respond(self, request: dict[str, Any], responder: Responder) -> Response:
        return self.status, b"", {"Location": self.location}


Fault = ErrorReply | Content | Refusal | Body | Hang | Trickle | Encoded | Redirect


def rate_limited(
    retry_after: str | None = None, retry_after_ms: str | None = None, code: str | None = None
) -> ErrorReply:
    headers = {"Retry-After": retry_after, "retry-after-ms": retry_after_ms}
    return ErrorReply(
        status=429,
        message="Rate limit reached for requests",
        type="rate_limit_error",
        code=code,
        headers={name: value for name, value in headers.items() if value is not None},
    )


def quota_exhausted() -> ErrorReply:
    return ErrorReply(
        status=429,
        message="You exceeded your current quota, please check your plan and billing details.",
        type="insufficient_quota",
        code="insufficient_quota",
    )


def server_error(status: int = 500) -> ErrorReply:
    return ErrorReply(status=status, message="The server had an error while processing")


def unauthorized(message: str = "Incorrect API key provided.") -> ErrorReply:
    return ErrorReply(
        status=401, message=message, type="invalid_request_error", code="invalid_api_key"
    )


def model_not_found(model: str) -> ErrorReply:
    return ErrorReply(
        status=404,
        message=f"The model `{model}` does not exist or you do not have access to it.",
        type="invalid_request_error",
        code="model_not_found",
    )


def descriptions_json(texts: list[str]) -> str:
    """The content of a descriptions answer holding these texts."""
    return json.dumps({"descriptions": [{"text": text} for text in texts]})


def response_schema(request: dict[str, Any]) -> dict[str, Any]:
    """The JSON schema a request asks for, in json_schema or llama.cpp's json_object form."""
    response_format = request.get("response_format") or {}
    if response_format.get("type") == "json_schema":
        return response_format["json_schema"]["schema"]
    return response_format.get("schema") or {}


def requested_count(request: dict[str, Any]) -> int:
    """How many descriptions the schema asks for (`minItems`), else DEFAULT_DESCRIPTION_COUNT."""
    descriptions = response_schema(request).get("properties", {}).get("descriptions", {})
    return descriptions.get("minItems", DEFAULT_DESCRIPTION_COUNT)


def describing_responder(
    count: Callable[[dict[str, Any]], int] = requested_count, words: int = 10
) -> Responder:
    """Answers with `count(request)` distinct descriptions of `words` words each.

    The words depend on the request's messages, so two classes get different descriptions and
    the same request always gets the same ones.
    """

    def respond(request: dict[str, Any]) -> str:
        digest = hashlib.sha256(json.dumps(request.get("messages"), sort_keys=True).encode())
        rng = random.Random(digest.hexdigest())
        texts = [
            " ".join(["Photo", str(number), "shows", *rng.choices(VOCABULARY, k=words - 3)]) + "."
            for number in range(1, count(request) + 1)
        ]
        return descriptions_json(texts)

    return respond


@dataclass(frozen=True)
class ReceivedRequest:
    path: str
    body: dict[str, Any]
    at: float  # time.monotonic() on arrival


class FakeOpenAI:
    """The server; counts and records every request, safely across its handler threads."""

    def __init__(
        self,
        responder: Responder | None = None,
        reject_json_schema_status: int | None = None,
        port: int = 0,
    ) -> None:
        """`reject_json_schema_status` (e.g. 400, or 500 as llama-cpp-python does) makes the
        server refuse `response_format.type == "json_schema"` and accept json_object only.
        `port` 0 picks a free one."""
        self.responder = responder or describing_responder()
        self.reject_json_schema_status = reject_json_schema_status
        self._faults: deque[Fault] = deque()
        self._received: list[ReceivedRequest] = []
        self._lock = threading.Lock()
        self.closing = threading.Event()
        self._http = ThreadingHTTPServer(("127.0.0.1", port), _handler_for(self))
        self._thread = threading.Thread(
            target=self._http.serve_forever, kwargs={"poll_interval": SHUTDOWN_POLL_S}, daemon=True
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._http.server_address[1]}/v1"

    @property
    def received(self) -> list[ReceivedRequest]:
        with self._lock:
            return list(self._received)

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self._received)

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [request.body for request in self.received]

    def enqueue(self, *faults: Fault) -> None:
        """Script the next requests, one fault each, before normal answers resume."""
        with self._lock:
            self._faults.extend(faults)

    def start(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def close(self) -> None:
        self.closing.set()
        self._http.shutdown()
        self._http.server_close()

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def reply(self, path: str, body: dict[str, Any]) -> Response | Writer:
        """Record the request and answer it: the rejection mode first, then the next fault."""
        if path == MODELS_PATH:  # the health check of a local server; not counted
            return json_response(200, {"object": "list", "data": [{"id": "fake"}]}, {})
        with self._lock:
            self._received.append(ReceivedRequest(path, body, time.monotonic()))
            if path != CHAT_PATH:
                fault: Fault | None = ErrorReply(404, f"no route {path}", "not_found_error")
            elif self._rejects_format(body):
                fault = ErrorReply(self.reject_json_schema_status, JSON_SCHEMA_REJECTION)
            else:
                fault = self._faults.popleft() if self._faults else None
        if fault is None:
            return completion_response(body, self.responder(body), None)
        return fault.respond(body, self.responder)

    def _rejects_format(self, body: dict[str, Any]) -> bool:
        response_format = body.get("response_format") or {}
        return (
            self.reject_json_schema_status is not None
            and response_format.get("type") == "json_schema"
        )


def _handler_for(server: FakeOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self._answer(server.reply(self.path, json.loads(self.rfile.read(length) or b"{}")))

        def do_GET(self) -> None:
            self._answer(server.reply(self.path, {}))

        def _answer(self, answer: Response | Writer) -> None:
            if callable(answer):
                answer(self, server.closing)
            else:
                self._send(*answer)

        def _send(self, status: int, data: bytes, headers: Mapping[str, str]) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a Hang past its timeout)

        def log_message(self, format: str, *args: Any) -> None:
            """Silence the per-request log lines."""

    return Handler
