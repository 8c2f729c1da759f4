"""A loopback image server for download tests: generated JPEGs, scripted faults, a request log.

    with ImageServer() as server:
        server.script("/img/a.jpg", status(429, {"Retry-After": "1"}), image())
        url = server.url("/img/a.jpg")
        ...
        assert server.requests_for("/img/a.jpg") == 2

Each request to a scripted path takes the next behaviour of its script, the last one repeating;
any other `/img/<name>` answers a JPEG generated from the name; everything else is a 404. The
server records when each request arrived, so tests measure request rates as the server sees them.
"""

from __future__ import annotations

import hashlib
import io
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

from PIL import Image

from testkit.hostile_http import gzip_bomb, head, trickle

HANG_LIMIT_S = 30.0  # a hanging answer gives up by itself if the test forgets to close
Behaviour = Callable[[BaseHTTPRequestHandler, "ImageServer"], None]


def jpeg_bytes(name: str, size: tuple[int, int] = (48, 32)) -> bytes:
    """A small JPEG whose colours depend on `name`, so every image is different."""
    digest = hashlib.sha256(name.encode()).digest()
    image = Image.new("RGB", size, tuple(digest[:3]))
    image.paste(tuple(digest[3:6]), (0, 0, size[0] // 2, size[1] // 2))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _send(
    handler: BaseHTTPRequestHandler,
    code: int,
    body: bytes,
    headers: dict[str, str],
    length: int | None,
) -> None:
    handler.send_response(code)
    for key, value in headers.items():
        handler.send_header(key, value)
    if length is not None:
        handler.send_header("Content-Length", str(length))
    handler.end_headers()
    handler.wfile.write(body)


def image(size: tuple[int, int] = (48, 32), content_type: str = "image/jpeg") -> Behaviour:
    """200 with a generated JPEG of the requested path."""

    def answer(handler: BaseHTTPRequestHandler, server: ImageServer) -> None:
        body = jpeg_bytes(handler.path, size)
        _send(handler, 200, body, {"Content-Type": content_type}, len(body))

    return answer


def status(code: int, headers: dict[str, str] | None = None, body: bytes = b"") -> Behaviour:
    def answer(handler: BaseHTTPRequestHandler, server: ImageServer) -> None:
        _send(handler, code, body, headers or {}, len(body))

    return answer


def html_page() -> Behaviour:
    """200 with an HTML page, as a CDN answers for a removed photo."""
    return status(200, {"Content-Type": "text/html; charset=utf-8"}, b"<html>gone</html>")


def redirect(location: str) -> Behaviour:
    return status(302, {"Location": location})


def truncated(declare_length: bool) -> Behaviour:
    """Half a JPEG, then the connection closes: with the full Content-Length declared (the
    client sees a short body), or without one (the body just ends early)."""

    def answer(handler: BaseHTTPRequestHandler, server: ImageServer) -> None:
        body = jpeg_bytes(handler.path)
        length = len(body) if declare_length else None
        _send(handler, 200, body[: len(body) // 2], {"Content-Type": "image/jpeg"}, length)
        handler.close_connection = True

    return answer


def oversized(size: int, declare_length: bool) -> Behaviour:
    """A body of `size` bytes, declared or streamed without a length."""

    def answer(handler: BaseHTTPRequestHandler, server: ImageServer) -> None:
        body = jpeg_bytes(handler.path) + bytes(size)
        length = len(body) if declare_length else None
        _send(handler, 200, body, {"Content-Type": "image/jpeg"}, length)
        handler.close_connection = True

    return answer


def trickling(delay_s: float, part: str = "body") -> Behaviour:
    """A JPEG sent one byte every `delay_s` seconds, from the status line on (`part="headers"`)
    or its body only: bytes keep coming, so only a total deadline ends the request."""

    def answer(handler: BaseHTTPRequestHandler, server: ImageServer) -> None:
        body = jpeg_bytes(handler.path)
        headers = head(200, "OK", {"Content-Type": "image/jpeg", "Content-Length": str(len(body))})
        if part == "headers":
            trickle(handler, headers + body, delay_s, server.closing)
        else:
            handler.wfile.write(headers)
            trickle(handler, body, delay_s, server.closing)

    return answer


def gzip_bombed(inflated_bytes: int) -> Behaviour:
    """An "image" of `inflated_bytes` zeros, sent gzip-encoded: a thousandth of that."""
    return status(
        200, {"Content-Type": "image/jpeg", "Content-Encoding": "gzip"}, gzip_bomb(inflated_bytes)
    )


def hang() -> Behaviour:
    """Never answer (until the server closes): the client's timeout must end the wait."""

    def answer(handler: BaseHTTPRequestHandler, server: ImageServer) -> None:
        server.closing.wait(HANG_LIMIT_S)

    return answer


def slow_image(delay_s: float) -> Behaviour:
    """A JPEG after `delay_s` seconds, so a test can stop a run half-way."""

    def answer(handler: BaseHTTPRequestHandler, server: ImageServer) -> None:
        server.closing.wait(delay_s)
        image()(handler, server)

    return answer


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        owner = self.server.owner
        owner.user_agents.add(self.headers.get("User-Agent", ""))
        behaviour = owner.next_behaviour(self.path)
        if behaviour is None:
            status(404, {"Content-Type": "text/plain"}, b"not found")(self, owner)
        else:
            behaviour(self, owner)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the tests read the request log instead."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: ImageServer


class ImageServer:
    def __init__(self) -> None:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self._scripts: dict[str, list[Behaviour]] = {}
        self._lock = threading.Lock()
        self.closing = threading.Event()
        self.log: list[tuple[float, str]] = []  # (arrival, path)
        self.user_agents: set[str] = set()
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )

    def url(self, path: str) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}{path}"

    def script(self, path: str, *behaviours: Behaviour) -> None:
        self._scripts[path] = list(behaviours)

    def next_behaviour(self, path: str) -> Behaviour | None:
        with self._lock:
            self.log.append((time.monotonic(), path))
            script = self._scripts.get(path)
            if script:
                return script.pop(0) if len(script) > 1 else script[0]
        return image() if path.startswith("/img/") else None

    def requests_for(self, path: str) -> int:
        with self._lock:
            return sum(1 for _, seen in self.log if seen == path)

    def arrivals(self) -> list[float]:
        with self._lock:
            return [when for when, _ in self.log]

    def __enter__(self) -> ImageServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
