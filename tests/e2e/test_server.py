"""End to end: a real `python -m app` process on 127.0.0.1, driven over HTTP like curl would."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest

from scripts.localserver import local_server
from tests.support.http import ok
from tests.support.images import decode_response, gradient_image, png_bytes


@pytest.fixture
def server(weights_dir: Path, tmp_path: Path) -> Iterator[str]:
    with local_server(weights_dir, tmp_path / "server.log", startup_s=60) as srv:
        yield srv.url


@pytest.mark.slow
def test_e2e_serves_health_upscale_and_generate(server: str) -> None:
    health = ok(httpx.get(f"{server}/health")).json()
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


@pytest.mark.slow
@pytest.mark.parametrize(("env", "warned"), [({}, True), ({"UPSCALER_API_KEY": "k"}, False)])
def test_e2e_warns_when_open_beyond_loopback_without_a_key(
    weights_dir: Path, tmp_path: Path, env: dict[str, str], warned: bool
) -> None:
    log = tmp_path / "server.log"
    settings = {"UPSCALER_HOST": "0.0.0.0", "UPSCALER_LOG_LEVEL": "info", **env}
    with local_server(weights_dir, log, env=settings, startup_s=60) as srv:
        assert httpx.get(f"{srv.url}/health/live").status_code == 200
        text = srv.log()
    assert ("listening on 0.0.0.0 without an API key" in text) is warned, text


@pytest.mark.slow
def test_e2e_uvicorn_app_main_app_serves(weights_dir: Path, tmp_path: Path) -> None:
    """`uvicorn app.main:app` builds the app from the environment when uvicorn asks for it."""
    import subprocess
    import sys

    from scripts.localserver import free_port, wait_ready
    from tests.support.paths import ROOT

    port = free_port()
    env = {**os.environ, "UPSCALER_WEIGHTS_DIR": str(weights_dir)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc, 60)
        health = httpx.get(f"http://127.0.0.1:{port}/health")
        assert health.status_code == 200 and health.json()["default_model"] == "tiny-x2"
        resp = httpx.post(
            f"http://127.0.0.1:{port}/upscale",
            files={"image": ("a.png", png_bytes(gradient_image(32, 24)), "image/png")},
            timeout=60,
        )
        assert resp.status_code == 200 and resp.headers["x-upscaler"] == "tiny-x2"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
