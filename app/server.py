"""uvicorn's HTTP protocol with a deadline on request headers.

uvicorn closes idle keep-alive connections (`timeout_keep_alive`) but has no limit on how long a
connection may take to send a request's headers: a client that opens connections and stalls (or
drips one byte at a time) would hold them for ever. This protocol closes a connection whose next
request's headers are not complete within UPSCALER_READ_TIMEOUT_S of its first byte (or of the
connection's start). The body's own deadline is the app's (app/api/uploads.py: 408).

It also bounds a request head's size. h11 refuses a head over 16 KiB itself (400); uvicorn's
httptools protocol has no such limit and keeps whatever a client sends as headers (300 MB of header
lines in a second on loopback, all of it held), so `HeadLimit` answers a head over the same 16 KiB
with 431 and closes the connection.

The protocol is uvicorn's httptools one (llhttp, in C) when httptools is installed, as it is with
this project's dependencies, else its pure-Python h11 one. Per request, httptools hands the body to
the app without h11's receive-buffer copies and parses in C: the event loop's thread, which every
request passes through, spent 6-7 ms of CPU per 1024² PNG -> 2048² PNG request with httptools and
uvloop against 9-13 ms with h11 and asyncio's own loop on this project's 2-core machine.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from h11._connection import DEFAULT_MAX_INCOMPLETE_EVENT_SIZE
from uvicorn.protocols.http.h11_impl import H11Protocol

from app.errors import error_body

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is not installed: h11 it is
    HttpToolsProtocol = None  # type: ignore[assignment, misc]


def between_requests(protocol: object) -> bool:
    """True while a uvicorn protocol has no request in progress: none yet, or the last one answered
    (its `cycle`, set once a request's headers are complete, is done)."""
    cycle: Any = getattr(protocol, "cycle", None)
    return cycle is None or bool(cycle.response_complete)


class HeaderDeadline(asyncio.Protocol):
    """Mixed in before uvicorn's protocol class: arms a timer while no request is in, disarms it once
    a request's headers are complete (the protocol's `cycle` is a response in progress)."""

    header_timeout_s: float = 30.0
    transport: asyncio.Transport
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if between_requests(self):
            self._arm()  # between requests, or inside an incomplete request head
        else:
            self._disarm()  # headers are in: the request is the app's now

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = asyncio.get_running_loop().call_later(self.header_timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expire(self) -> None:
        self._header_timer = None
        if between_requests(self):
            self.transport.close()


class HeadLimit(asyncio.Protocol):
    """Mixed in before uvicorn's httptools protocol: counts the bytes received while a request head is
    incomplete (from llhttp's message-begin to its headers-complete callback, pipelined heads
    included) and, past `max_head_bytes`, answers 431 (or, mid-response, just closes)."""

    max_head_bytes: int = DEFAULT_MAX_INCOMPLETE_EVENT_SIZE
    transport: asyncio.Transport
    _in_head = False
    _head_bytes = 0

    def on_message_begin(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        super().on_message_begin()  # type: ignore[misc]

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()  # type: ignore[misc]

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        super().data_received(data)
        if not self._in_head:
            return
        # Whole chunks: the one a head began in may also hold the end of a pipelined request before it.
        self._head_bytes += len(data)
        if self._head_bytes > self.max_head_bytes:
            if between_requests(self):
                body = json.dumps(
                    error_body("headers_too_large", f"the request head is over {self.max_head_bytes} bytes")
                ).encode()
                self.transport.write(
                    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
                )
            self.transport.close()


def header_timeout_protocol(timeout_s: float, prefer_httptools: bool = True) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with HeadLimit (h11's without httptools, or with
    `prefer_httptools=False`) and HeaderDeadline's timer of `timeout_s`."""
    if prefer_httptools and HttpToolsProtocol is not None:
        bases: tuple[type, ...] = (HeaderDeadline, HeadLimit, HttpToolsProtocol)
    else:
        bases = (HeaderDeadline, H11Protocol)  # h11 bounds the head itself
    return type(f"HeaderTimeout{bases[-1].__name__}", bases, {"header_timeout_s": timeout_s})
