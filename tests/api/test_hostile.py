"""What a hostile trial found, answered: steps bounded by the request timeout (LANCZOS included),
nested JSON, metadata without limit, echoed input of any length, a repeated image part."""

from __future__ import annotations

import io
import time
import zlib
from pathlib import Path

import httpx2 as httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, PngImagePlugin

from app import service as service_module
from app.imaging.pngwrite import chunk
from tests.conftest import ClientFactory
from tests.support.http import ok
from tests.support.images import SRGB, gradient_image, png_bytes

PNG = png_bytes(gradient_image(40, 30))


def post(client: TestClient, data: bytes = PNG, **fields: str) -> httpx.Response:
    return client.post("/upscale", files={"image": ("a.png", data, "image/png")}, data=fields)


def test_hostile_lanczos_step_past_the_deadline_is_504_and_stops_there(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = make_client({"UPSCALER_REQUEST_TIMEOUT_S": "0.3"})
    original, encoded = service_module.UpscaleService._resize, []

    def slow_resize(*args: object) -> object:
        time.sleep(1.0)
        return original(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(service_module.UpscaleService, "_resize", staticmethod(slow_resize))

    def encode_nothing(*args: object, **kwargs: object) -> bytes:
        encoded.append(1)
        return b""

    monkeypatch.setattr(service_module, "encode", encode_nothing)
    t0 = time.monotonic()
    resp = post(client, model="lanczos", scale="2")
    assert resp.status_code == 504 and resp.json()["error"]["type"] == "timeout"
    assert time.monotonic() - t0 < 0.9  # answered at the deadline, not when the step ended
    budget = client.app.state.upscaler.service.budget  # type: ignore[attr-defined]
    assert budget.reserved > 0  # the abandoned step still holds its memory
    time.sleep(1.2)
    assert encoded == [] and budget.reserved == 0  # the encode never started; the memory came back


def test_hostile_generate_batch_over_the_cap_is_413(make_client: ClientFactory) -> None:
    import base64

    client = make_client({"UPSCALER_MAX_BATCH": "3"})
    b64 = base64.b64encode(PNG).decode()
    resp = client.post("/generate", json={"images": [b64] * 4})
    assert resp.status_code == 413 and "UPSCALER_MAX_BATCH" in resp.json()["error"]["message"]


@pytest.mark.parametrize("route", ["/generate", "/sdapi/v1/extra-single-image"])
def test_hostile_deeply_nested_json_is_422(client: TestClient, route: str) -> None:
    body = '{"image": ' + "[" * 10_000 + "]" * 10_000 + "}"
    resp = client.post(route, content=body, headers={"Content-Type": "application/json"})
    assert resp.status_code == 422 and resp.json()["error"]["type"] == "validation_error"
    assert ok(client.get("/health/live")).status_code == 200


def text_heavy_png(chunks: dict[str, int]) -> bytes:
    """A small PNG with zTXt chunks of the given sizes (incompressible text, so the sizes hold)."""
    info = PngImagePlugin.PngInfo()
    rng = np.random.default_rng(0)
    for key, size in chunks.items():
        info.add_text(key, rng.integers(33, 127, size, dtype=np.uint8).tobytes().decode(), zip=True)
    buf = io.BytesIO()
    gradient_image(16, 12).save(buf, "PNG", pnginfo=info)
    return buf.getvalue()


def test_hostile_metadata_over_the_cap_is_dropped_and_named(make_client: ClientFactory) -> None:
    client = make_client({"UPSCALER_MAX_METADATA_KB": "64"})
    data = text_heavy_png({"parameters": 10_000, "big1": 40_000, "big2": 40_000})
    resp = ok(post(client, data, model="lanczos"))
    assert resp.headers["x-metadata-dropped"] == "text:big2"
    out = Image.open(io.BytesIO(resp.content))
    assert set(out.text) == {"parameters", "big1"}  # type: ignore[attr-defined]
    within = ok(post(client, text_heavy_png({"parameters": 1000}), model="lanczos"))
    assert "x-metadata-dropped" not in within.headers


def test_hostile_icc_profile_over_the_cap_is_dropped(make_client: ClientFactory) -> None:
    client = make_client({"UPSCALER_MAX_METADATA_KB": "0"})  # nothing may ride along
    buf = io.BytesIO()
    gradient_image(16, 12).save(buf, "PNG", icc_profile=SRGB)
    resp = ok(post(client, buf.getvalue(), model="lanczos"))
    assert resp.headers["x-metadata-dropped"] == "icc"
    assert "icc_profile" not in Image.open(io.BytesIO(resp.content)).info


def test_hostile_zip_bomb_text_stays_bounded(client: TestClient) -> None:
    """A 1 MB zTXt chunk compresses to ~1 KB: the upload is small, what it would carry is not."""
    text = "a" * (1 << 20)
    data = bytearray(png_bytes(gradient_image(16, 12)))
    ztxt = chunk(b"zTXt", b"bomb\x00\x00" + zlib.compress(text.encode(), 9))
    bombed = bytes(data[:33]) + ztxt * 40 + bytes(data[33:])
    assert len(bombed) < 100_000
    resp = ok(post(client, bombed, model="lanczos"))
    assert len(resp.content) < 2 * 1024 * 1024 and "text:bomb" in resp.headers["x-metadata-dropped"]


def test_hostile_echoes_at_most_200_characters_of_input(client: TestClient) -> None:
    resp = post(client, model="m" * 10_000)
    assert resp.status_code == 400 and len(resp.json()["error"]["message"]) < 400
    resp = post(client, format="x" * 10_000)
    assert resp.status_code == 400 and len(resp.json()["error"]["message"]) < 400


def test_hostile_repeated_image_part_is_400(client: TestClient) -> None:
    files = [("image", ("a.png", PNG, "image/png")), ("image", ("b.png", PNG, "image/png"))]
    resp = client.post("/upscale", files=files)
    assert resp.status_code == 400 and "one part named 'image'" in resp.json()["error"]["message"]


def test_hostile_oversized_body_while_streaming_is_413(make_client: ClientFactory, tmp_path: Path) -> None:
    client = make_client({"UPSCALER_MAX_UPLOAD_MB": "0.01"})

    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(20):
            yield b"\0" * 1024

    resp = client.post("/upscale", content=chunks(), headers={"Content-Type": "image/png"})
    assert resp.status_code == 413 and resp.json()["error"]["type"] == "payload_too_large"
    multipart = client.post("/upscale", files={"image": ("a.png", b"\0" * 20_000, "image/png")})
    assert multipart.status_code == 413
