"""HTTP responses read within bounds: a total deadline per request, a cap on the decoded body.

httpx bounds each wait (to connect, for the next bytes) but not a request as a whole, so a
server that sends its headers or its body a byte a second holds a request forever; and it
inflates a gzip body as it arrives, so 200 KB can become gigabytes in memory. Both the LLM
client (through `BoundedTransport`) and the image downloader (through `BodyDecoder` and an
asyncio deadline) read every response within these bounds:

- every socket operation of a request, from connecting to the body's last byte, ends by the
  request's deadline: passing it is `DeadlinePassed`, a timeout that the retry policy retries;
- the body is decoded here, never past `limit` bytes (`ResponseTooLarge`, not retried); only
  the encodings bounded here are asked for (`ACCEPT_ENCODING`), any other is refused;
- only http and https URLs are requested, redirects included (`NotHttpURL`, not retried).
"""

from __future__ import annotations

import threading
import time
import urllib.request
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import httpcore2
import httpx2

ALLOWED_SCHEMES = frozenset({"http", "https"})
ACCEPT_ENCODING = "gzip, deflate"
_ZLIB_FORMATS = {"gzip": zlib.MAX_WBITS | 16, "x-gzip": zlib.MAX_WBITS | 16}


class DeadlinePassed(httpx2.ReadTimeout):
    """The request, from connecting to the body's last byte, outlasted its total deadline."""

    def __init__(self, deadline: float) -> None:
        super().__init__(f"not complete within its total deadline of {deadline:g} s")
        self.deadline = deadline


class ResponseTooLarge(Exception):
    """A body larger than the cap once decoded; refused as it arrives, never held in full."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the response is larger than {limit:,} bytes once decompressed")
        self.limit = limit


class UnsupportedEncoding(Exception):
    """A Content-Encoding this reader cannot bound (it asks for gzip and deflate only)."""

    def __init__(self, encoding: str) -> None:
        super().__init__(f"the response has Content-Encoding {encoding!r}, which was not asked for")


class NotHttpURL(Exception):
    """A request, a redirect's most likely, to a URL that is not http or https."""

    def __init__(self, url: str) -> None:
        super().__init__(f"a redirect to {url!r}: only http and https URLs are followed")
        self.url = url


class BodyDecoder:
    """A body's Content-Encoding undone chunk by chunk, never producing more than `limit`
    bytes: a compressed body is inflated a bounded step at a time, and refused at the cap."""

    def __init__(self, content_encoding: str, limit: int) -> None:
        self.limit = limit
        self.size = 0
        encoding = content_encoding.strip().lower()
        self._inflater: Any = None
        self._raw_deflate_tried = False
        if encoding in _ZLIB_FORMATS:
            self._inflater = zlib.decompressobj(_ZLIB_FORMATS[encoding])
        elif encoding == "deflate":
            self._inflater = zlib.decompressobj()
        elif encoding not in ("", "identity"):
            raise UnsupportedEncoding(content_encoding)

    def decode(self, data: bytes) -> bytes:
        """The decoded bytes of the next raw chunk; `ResponseTooLarge` past the cap."""
        if self._inflater is not None and data:
            room = self.limit - self.size + 1  # one byte more than allowed tells "too large"
            try:
                data = self._inflater.decompress(data, room)
            except zlib.error as err:
                data = self._raw_deflate(data, room, err)
        return self._counted(data)

    def flush(self) -> bytes:
        """What the inflater still holds once the body has ended."""
        if self._inflater is None:
            return b""
        return self._counted(self._inflater.flush())

    def _raw_deflate(self, data: bytes, room: int, err: zlib.error) -> bytes:
        """Some servers send `deflate` without its zlib header: retry the first chunk raw."""
        if self.size or self._raw_deflate_tried or self._inflater.unused_data:
            raise httpx2.DecodingError(f"cannot decode the response body ({err})") from err
        self._raw_deflate_tried = True
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            return self._inflater.decompress(data, room)
        except zlib.error as raw_err:
            raise httpx2.DecodingError(f"cannot decode the response body ({raw_err})") from err

    def _counted(self, data: bytes) -> bytes:
        self.size += len(data)
        if self.size > self.limit:
            raise ResponseTooLarge(self.limit)
        return data


_current = threading.local()  # the deadline of the request this thread is making


def _bounded(timeout: float | None) -> float:
    """A wait of at most `timeout`, and never past the current request's deadline."""
    deadline = getattr(_current, "deadline", None)
    if deadline is None:
        return timeout  # type: ignore[return-value]
    left = deadline - time.monotonic()
    if left <= 0:
        raise httpcore2.ReadTimeout("the total deadline passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore2.NetworkStream):
    """A connection whose every read, write and TLS handshake ends by the request's deadline."""

    def __init__(self, stream: httpcore2.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _bounded(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _bounded(timeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore2.NetworkStream:
        return _DeadlineStream(
            self._stream.start_tls(ssl_context, server_hostname, _bounded(timeout))
        )

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore2.NetworkBackend):
    """httpcore's own sockets, each wrapped in a `_DeadlineStream`."""

    def __init__(self) -> None:
        self._backend = httpcore2.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.NetworkStream:
        stream = self._backend.connect_tcp(
            host, port, _bounded(timeout), local_address, socket_options
        )
        return _DeadlineStream(stream)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore2.NetworkStream:
        return _DeadlineStream(
            self._backend.connect_unix_socket(path, _bounded(timeout), socket_options)
        )

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class BoundedTransport(httpx2.BaseTransport):
    """An httpx transport for a synchronous client (the openai one): every request within
    `deadline` seconds in all, every body decoded here up to `max_body` bytes, http and https
    only. The proxy the environment names for a URL (`HTTPS_PROXY`, `NO_PROXY`...) is used,
    through the same bounded sockets."""

    def __init__(self, deadline: float, max_body: int, max_connections: int = 10) -> None:
        self.deadline = deadline
        self.max_body = max_body
        self._ssl_context = httpx2.create_ssl_context()
        self._backend = _DeadlineBackend()
        self._max_connections = max_connections
        self._pools: dict[str | None, httpcore2.ConnectionPool] = {}
        self._lock = threading.Lock()

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        url = request.url
        if url.scheme not in ALLOWED_SCHEMES:
            raise NotHttpURL(str(url))
        headers = [(k, v) for k, v in request.headers.raw if k.lower() != b"accept-encoding"]
        core_request = httpcore2.Request(
            method=request.method,
            url=httpcore2.URL(
                scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path
            ),
            headers=[*headers, (b"Accept-Encoding", ACCEPT_ENCODING.encode())],
            content=request.stream,
            extensions=request.extensions,
        )
        deadline = time.monotonic() + self.deadline
        with _within(deadline, self.deadline):
            response = self._pool_for(url).handle_request(core_request)
        headers = httpx2.Headers(response.headers)
        try:
            decoder = BodyDecoder(headers.get("content-encoding", ""), self.max_body)
        except UnsupportedEncoding:
            response.close()
            raise
        if "content-encoding" in headers:
            del headers["content-encoding"]
            headers.pop("content-length", None)
        return httpx2.Response(
            status_code=response.status,
            headers=headers,
            stream=_BoundedBody(response.stream, decoder, deadline, self.deadline),
            extensions=response.extensions,
        )

    def _pool_for(self, url: httpx2.URL) -> httpcore2.ConnectionPool:
        proxy = urllib.request.getproxies().get(url.scheme)
        if proxy and urllib.request.proxy_bypass(url.host):
            proxy = None
        with self._lock:
            if proxy not in self._pools:
                options = {
                    "ssl_context": self._ssl_context,
                    "network_backend": self._backend,
                    "max_connections": self._max_connections,
                }
                self._pools[proxy] = (
                    httpcore2.ConnectionPool(**options)
                    if proxy is None
                    else httpcore2.HTTPProxy(proxy_url=proxy, **options)
                )
            return self._pools[proxy]

    def close(self) -> None:
        with self._lock:
            for pool in self._pools.values():
                pool.close()
            self._pools.clear()


_HTTPCORE_ERRORS = (
    httpcore2.TimeoutException,
    httpcore2.NetworkError,
    httpcore2.ProtocolError,
    httpcore2.ProxyError,
    httpcore2.UnsupportedProtocol,
)


@contextmanager
def _within(deadline: float, seconds: float) -> Iterator[None]:
    """This thread's sockets bounded by `deadline` while the block runs; httpcore's errors
    raised as httpx's (what the openai client expects), a timeout once the deadline has
    passed as `DeadlinePassed` (of `seconds`)."""
    _current.deadline = deadline
    try:
        yield
    except _HTTPCORE_ERRORS as err:
        if isinstance(err, httpcore2.TimeoutException) and time.monotonic() >= deadline:
            raise DeadlinePassed(seconds) from err
        raise _as_httpx(err) from err
    finally:
        _current.deadline = None


def _as_httpx(err: Exception) -> httpx2.HTTPError:
    """httpx's exception of the same name (httpx maps httpcore's one to one, by name)."""
    for kind in type(err).__mro__:
        mapped = getattr(httpx2, kind.__name__, None)
        if isinstance(mapped, type) and issubclass(mapped, httpx2.HTTPError):
            return mapped(str(err))
    return httpx2.TransportError(str(err))


class _BoundedBody(httpx2.SyncByteStream):
    """The body of one response, decoded and capped, read within the request's deadline."""

    def __init__(
        self, stream: Iterable[bytes], decoder: BodyDecoder, deadline: float, seconds: float
    ) -> None:
        self._stream, self._decoder = stream, decoder
        self._deadline, self._seconds = deadline, seconds

    def __iter__(self) -> Iterator[bytes]:
        chunks = iter(self._stream)
        while True:
            with _within(self._deadline, self._seconds):
                chunk = next(chunks, None)
            if chunk is None:
                break
            yield self._decoder.decode(chunk)
        yield self._decoder.flush()

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            close()
