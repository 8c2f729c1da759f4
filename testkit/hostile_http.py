"""What hostile HTTP servers send, shared by the loopback test servers: a body that inflates
far beyond its size, and bytes sent one at a time. Every loop here is bounded."""

from __future__ import annotations

import threading
import zlib
from functools import cache
from http.server import BaseHTTPRequestHandler

TRICKLE_LIMIT_S = 60.0  # a trickle gives up by itself, whatever the client does


@cache
def gzip_bomb(inflated_bytes: int) -> bytes:
    """A gzip member of zeros: about a thousandth of `inflated_bytes` on the wire."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    chunk = bytes(1 << 20)
    parts = [compressor.compress(chunk) for _ in range(inflated_bytes >> 20)]
    return b"".join([*parts, compressor.flush()])


def trickle(
    handler: BaseHTTPRequestHandler, data: bytes, delay_s: float, closing: threading.Event
) -> None:
    """Write `data` one byte every `delay_s` seconds, until it is all sent, the client goes
    away, the server closes or TRICKLE_LIMIT_S has passed."""
    waited = 0.0
    try:
        for index in range(len(data)):
            handler.wfile.write(data[index : index + 1])
            handler.wfile.flush()
            if closing.wait(delay_s) or waited > TRICKLE_LIMIT_S:
                return
            waited += delay_s
    except (BrokenPipeError, ConnectionResetError):
        pass  # the client gave up, as it should
    handler.close_connection = True


def head(status: int, reason: str, headers: dict[str, str]) -> bytes:
    """The status line and headers of an HTTP/1.1 response, as sent on the wire."""
    lines = [f"HTTP/1.1 {status} {reason}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
