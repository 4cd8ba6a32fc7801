"""End to end: a real `python -m app` process on 127.0.0.1, driven over HTTP like curl would."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.conftest import ROOT, decode_response, gradient_image, png_bytes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(weights_dir: Path, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = {
        **os.environ,
        "UPSCALER_HOST": "127.0.0.1",
        "UPSCALER_PORT": str(port),
        "UPSCALER_WEIGHTS_DIR": str(weights_dir),
        "UPSCALER_LOG_LEVEL": "warning",
    }
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "app"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"server exited: {(tmp_path / 'server.log').read_text()}")
            try:
                if httpx.get(f"{url}/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        else:
            pytest.fail("server did not become ready in 60 s")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


@pytest.mark.slow
def test_e2e_serves_health_upscale_and_generate(server: str) -> None:
    health = httpx.get(f"{server}/health").json()
    assert health["status"] == "ok" and health["default_model"] == "tiny-x2"

    img = png_bytes(gradient_image(64, 48))
    resp = httpx.post(
        f"{server}/upscale", files={"image": ("in.png", img, "image/png")}, data={"scale": "4"}, timeout=60
    )
    assert resp.status_code == 200 and resp.headers["x-upscaler"] == "tiny-x4"
    assert decode_response(resp.content).size == (256, 192)

    resp = httpx.post(
        f"{server}/upscale?scale=2", content=img, headers={"Content-Type": "image/png"}, timeout=60
    )
    assert resp.status_code == 200 and resp.headers["x-output-size"] == "128x96"

    import base64

    resp = httpx.post(
        f"{server}/generate", json={"image": base64.b64encode(img).decode(), "hr_scale": 1.5}, timeout=60
    )
    assert resp.status_code == 200 and resp.json()["info"]["output_size"] == [96, 72]

    bad = httpx.post(f"{server}/upscale", content=b"junk", headers={"Content-Type": "image/png"})
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_image"
    assert httpx.get(f"{server}/health/live").status_code == 200  # still up after bad input


@pytest.mark.slow
def test_e2e_health_answers_while_upscaling(server: str) -> None:
    img = png_bytes(gradient_image(400, 300))
    done: list[int] = []
    worker = threading.Thread(
        target=lambda: done.append(
            httpx.post(
                f"{server}/upscale",
                files={"image": ("a.png", img, "image/png")},
                data={"scale": "4"},
                timeout=120,
            ).status_code
        )
    )
    worker.start()
    answered = 0
    while worker.is_alive() and answered < 20:
        assert httpx.get(f"{server}/health", timeout=10).status_code == 200
        answered += 1
        time.sleep(0.05)
    worker.join(120)
    assert done == [200] and answered >= 1
