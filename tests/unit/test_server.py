"""The header deadline and the head size limit on both of uvicorn's HTTP protocols (httptools, the
default, and h11 where httptools is missing), each serving a real socket on loopback: stalled headers
are closed, a request whose answer takes longer than the deadline is not cut, the next request on a
kept-alive connection gets the deadline again (an idle one is uvicorn's `timeout_keep_alive`'s), and a
head over 16 KiB is refused and closed, pipelined behind a request in progress too."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import uvicorn
from uvicorn.server import ServerState

from app.server import HeaderDeadline, HeadLimit, HttpToolsProtocol, header_timeout_protocol

DEADLINE_S = 0.3
BASES = ["httptools", "h11"]


async def slow_app(
    scope: dict, receive: Callable[[], Awaitable[dict]], send: Callable[[dict], Awaitable[None]]
) -> None:
    assert scope["type"] == "http"
    while (await receive()).get("more_body"):
        pass
    await asyncio.sleep(3 * DEADLINE_S)  # the answer takes longer than the header deadline
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@asynccontextmanager
async def connected(base: str) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """One connection to a server on loopback with `base`'s protocol; both closed on exit."""
    config = uvicorn.Config(slow_app, log_level="warning", timeout_keep_alive=60)
    config.load()
    protocol = header_timeout_protocol(DEADLINE_S, prefer_httptools=base == "httptools")
    state = ServerState()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: protocol(config=config, server_state=state, app_state={}),  # type: ignore[call-arg]
        "127.0.0.1",
        0,
    )
    host, port = server.sockets[0].getsockname()[:2]
    reader, writer = await asyncio.open_connection(host, port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
        server.close()
        for proto in list(state.connections):
            proto.transport.close()
        await server.wait_closed()


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), seconds) == b""
    except TimeoutError:
        return False


@pytest.mark.parametrize("base", BASES)
def test_protocol_class(base: str) -> None:
    if base == "httptools" and HttpToolsProtocol is None:
        pytest.skip("httptools is not installed")
    cls = header_timeout_protocol(DEADLINE_S, prefer_httptools=base == "httptools")
    assert cls.__mro__[1] is HeaderDeadline
    assert cls.__mro__[-4].__module__ == f"uvicorn.protocols.http.{base}_impl"  # before asyncio's
    assert (HeadLimit in cls.__mro__) == (base == "httptools")  # h11 bounds the head itself
    assert cls.header_timeout_s == DEADLINE_S  # type: ignore[attr-defined]


@pytest.mark.parametrize("base", BASES)
def test_stalled_headers_are_closed(base: str) -> None:
    async def scenario() -> None:
        async with connected(base) as (reader, writer):
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # the head never ends
            await writer.drain()
            assert await closed_within(reader, 10 * DEADLINE_S)

    asyncio.run(scenario())


@pytest.mark.parametrize("base", BASES)
def test_a_slow_answer_is_not_cut_and_the_next_head_has_the_deadline(base: str) -> None:
    async def scenario() -> None:
        async with connected(base) as (reader, writer):
            writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10 * DEADLINE_S)
            assert head.startswith(b"HTTP/1.1 200")
            assert await reader.readexactly(2) == b"ok"
            writer.write(b"GET / HTTP/1.1\r\n")  # kept alive for 60 s, but this head never ends
            await writer.drain()
            assert await closed_within(reader, 10 * DEADLINE_S)

    asyncio.run(scenario())


async def answer(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """The status line and body of one response followed by the connection's close."""
    data = await asyncio.wait_for(reader.read(), 10 * DEADLINE_S)
    head, _, body = data.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0], body


@pytest.mark.parametrize("base", BASES)
def test_a_head_within_16_kib_is_served(base: str) -> None:
    async def scenario() -> None:
        async with connected(base) as (reader, writer):
            cookie = b"Cookie: " + b"c" * 12_000 + b"\r\n"  # a large, legal head
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n" + cookie + b"Connection: close\r\n\r\n")
            await writer.drain()
            assert await answer(reader) == (b"HTTP/1.1 200 OK", b"ok")

    asyncio.run(scenario())


@pytest.mark.parametrize("base", BASES)
def test_a_head_over_16_kib_is_refused(base: str) -> None:
    async def scenario() -> None:
        async with connected(base) as (reader, writer):
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nCookie: " + b"c" * 20_000)  # and no more
            await writer.drain()
            status, body = await answer(reader)
            if base == "httptools":  # this module's limit
                assert status == b"HTTP/1.1 431 Request Header Fields Too Large"
                assert json.loads(body)["error"]["type"] == "headers_too_large"
            else:  # h11's own
                assert status == b"HTTP/1.1 400 Bad Request"

    asyncio.run(scenario())


async def sent_before_cut(writer: asyncio.StreamWriter, chunk: bytes, most: int) -> int:
    """How many bytes went out, `chunk` after `chunk`, before the server cut the connection (stops
    at `most`)."""
    sent = 0
    try:
        while sent < most:
            writer.write(chunk)
            await writer.drain()
            sent += len(chunk)
    except ConnectionError:
        pass
    return sent


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize(
    "line", [b"X-A: " + b"a" * 1000 + b"\r\n", b"a" * 1000], ids=["many lines", "one value"]
)
def test_an_endless_head_is_cut_early(base: str, line: bytes) -> None:
    async def scenario() -> None:
        async with connected(base) as (_, writer):
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-B: ")
            # The server closes with this client's bytes unread: the client sees a reset, not the answer.
            assert await sent_before_cut(writer, line * 16, 64 << 20) < 8 << 20

    asyncio.run(scenario())


def test_a_huge_pipelined_head_behind_a_request_in_progress_is_closed() -> None:
    if HttpToolsProtocol is None:
        pytest.skip("httptools is not installed")

    async def scenario() -> None:
        async with connected("httptools") as (_, writer):
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # answered after 3 deadlines
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # the next head, never ending
            assert await sent_before_cut(writer, (b"X-A: " + b"a" * 1000 + b"\r\n") * 16, 64 << 20) < 8 << 20

    asyncio.run(scenario())
