"""Slow, stalled and vanishing clients against a real `python -m app`, over raw sockets on loopback:
a body that does not arrive in time is 408 and closed; a connection that never finishes its headers
is closed; a client that leaves mid-upload is counted as 499 (no traceback); beyond the connection
cap new connections get 503."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest

from scripts.localserver import LocalServer, local_server
from tests.support.images import gradient_image, png_bytes

PNG = png_bytes(gradient_image(40, 30))


@pytest.fixture
def server(weights_dir: Path, tmp_path: Path) -> Iterator[LocalServer]:
    env = {"UPSCALER_READ_TIMEOUT_S": "1", "UPSCALER_MAX_CONNECTIONS": "4", "UPSCALER_LOG_LEVEL": "info"}
    with local_server(weights_dir, tmp_path / "server.log", env=env, startup_s=60) as srv:
        yield srv


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def read_all(sock: socket.socket, limit_s: float = 10) -> bytes:
    sock.settimeout(limit_s)
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except TimeoutError:
        pass
    return b"".join(chunks)


@pytest.mark.slow
def test_slow_body_is_408_and_closed(server: LocalServer) -> None:
    sock = connect(server.url)
    head = (
        f"POST /upscale HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: {len(PNG)}\r\n\r\n"
    )
    sock.sendall(head.encode() + PNG[:50])  # then nothing more
    t0 = time.monotonic()
    answer = read_all(sock)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"request_timeout" in answer and 0.5 < time.monotonic() - t0 < 8


@pytest.mark.slow
def test_stalled_headers_are_closed(server: LocalServer) -> None:
    socks = [connect(server.url) for _ in range(3)]
    for sock in socks:
        sock.sendall(b"POST /upscale HTTP/1.1\r\nHost: x\r\n")  # headers never finish
    t0 = time.monotonic()
    for sock in socks:
        assert read_all(sock) == b""  # closed by the server
        sock.close()
    assert time.monotonic() - t0 < 8
    assert httpx.get(f"{server.url}/health/live").status_code == 200


@pytest.mark.slow
def test_client_leaving_mid_upload_is_499_without_a_traceback(server: LocalServer) -> None:
    sock = connect(server.url)
    head = (
        f"POST /upscale HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: {len(PNG)}\r\n\r\n"
    )
    sock.sendall(head.encode() + PNG[:50])
    time.sleep(0.2)
    sock.close()  # gone before the body is complete
    time.sleep(0.5)
    metrics = httpx.get(f"{server.url}/metrics")
    assert metrics.status_code == 200
    assert 'upscaler_requests_total{method="POST",route="/upscale",status="499"} 1.0' in metrics.text
    assert 'status="500"' not in metrics.text
    log = server.log()
    assert "Traceback" not in log and '"status":499' in log and "client_closed_request" in log


@pytest.mark.slow
def test_connections_beyond_the_cap_get_503(server: LocalServer) -> None:
    held: list[socket.socket] = []
    try:
        for _ in range(6):  # the cap is 4 connections at once, this one included
            sock = connect(server.url)
            held.append(sock)  # each holds its request open: the body is still to come
            sock.sendall(
                b"POST /upscale HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 100\r\n\r\n"
            )
            time.sleep(0.1)
        statuses = []
        for sock in held:
            sock.settimeout(0.2)
            try:
                statuses.append(sock.recv(100)[:12])
            except TimeoutError:
                statuses.append(b"(waiting)")
        # Within the cap: waiting for the body (or already timed out, 408). Beyond it: refused at once.
        assert all(s in (b"(waiting)", b"HTTP/1.1 408") for s in statuses[:3]), statuses
        assert statuses[3:] == [b"HTTP/1.1 503"] * 3, statuses
    finally:
        for sock in held:
            sock.close()
    time.sleep(1.5)
    assert httpx.get(f"{server.url}/health/live").status_code == 200
