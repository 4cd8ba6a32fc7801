"""End to end: a real `python -m app` process on 127.0.0.1, driven over HTTP like curl would."""

from __future__ import annotations

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
