"""POST /upscale through the app: both input styles, sizes, formats, every error and fallback reason."""

from __future__ import annotations

import io
import logging
import tempfile
import threading
from pathlib import Path

import httpx2 as httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.conftest import ClientFactory
from tests.support.http import ok, server_timing
from tests.support.images import crafted_png, decode_response, gradient_image, png_bytes
from tests.support.stubs import add_stub

PNG = png_bytes(gradient_image(40, 30))


def post(client: TestClient, data: bytes = PNG, **fields: str) -> httpx.Response:
    return client.post("/upscale", files={"image": ("in.png", data, "image/png")}, data=fields)


def assert_error(resp: httpx.Response, status: int, type_: str) -> None:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and body["error"]["type"] == type_ and body["error"]["message"]


def test_upscale_multipart_uses_default_model_scale(client: TestClient) -> None:
    resp = post(client)
    assert resp.status_code == 200
    h = resp.headers
    assert (h["x-upscaler"], h["x-upscale-backend"]) == ("tiny-x2", "pytorch")
    assert (h["x-input-size"], h["x-output-size"]) == ("40x30", "80x60")
    assert "x-fallback-reason" not in h and float(h["x-processing-ms"]) > 0
    assert resp.headers["content-type"] == "image/png"
    assert decode_response(resp.content).size == (80, 60)


@pytest.mark.parametrize(
    ("model", "stages"),
    [
        ("tiny-x2", ["budget", "decode", "queue", "model", "encode"]),
        ("lanczos", ["budget", "decode", "encode"]),
    ],
)
def test_upscale_says_where_its_time_went(client: TestClient, model: str, stages: list[str]) -> None:
    resp = post(client, model=model)
    assert resp.status_code == 200 and resp.headers["x-upscaler"] == model
    timing = server_timing(resp)
    assert list(timing) == stages and all(ms >= 0 for ms in timing.values())
    # The stages run one after another inside the request's processing time (each rounded to 0.1 ms).
    assert sum(timing.values()) <= float(resp.headers["x-processing-ms"]) + 0.05 * len(stages) + 0.05


def test_upscale_raw_body_with_query_parameters(client: TestClient) -> None:
    resp = client.post("/upscale?scale=4", content=PNG, headers={"Content-Type": "image/png"})
    assert resp.status_code == 200 and resp.headers["x-upscaler"] == "tiny-x4"
    assert decode_response(resp.content).size == (160, 120)
    octet = client.post("/upscale", content=PNG, headers={"Content-Type": "application/octet-stream"})
    assert octet.status_code == 200 and octet.headers["x-output-size"] == "80x60"


@pytest.mark.parametrize(
    ("fields", "model", "size"),
    [
        ({"scale": "3"}, "tiny-x4", (120, 90)),  # smallest native scale >= 3, then LANCZOS down
        ({"scale": "1.5"}, "tiny-x2", (60, 45)),
        ({"scale": "8"}, "tiny-x4", (320, 240)),  # the largest, run twice
        ({"scale": "6", "model": "tiny-x2"}, "tiny-x2", (240, 180)),
        ({"width": "100"}, "tiny-x4", (100, 75)),  # one side keeps the aspect ratio
        ({"width": "70", "height": "50"}, "tiny-x2", (70, 50)),
    ],
)
def test_upscale_any_size_runs_model_then_lanczos(
    client: TestClient, fields: dict, model: str, size: tuple[int, int]
) -> None:
    resp = post(client, **fields)
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-upscaler"] == model
    assert decode_response(resp.content).size == size


def test_upscale_repeats_a_model_whose_scale_is_short(make_client: ClientFactory) -> None:
    client = make_client()
    runner = add_stub(client, "stub", scale=2)
    resp = post(client, scale="5", model="stub")
    assert resp.status_code == 200 and decode_response(resp.content).size == (200, 150)
    assert runner.calls == 3  # 2 -> 4 -> 8, then LANCZOS to 5x


@pytest.mark.parametrize(
    ("fmt", "mime", "pil"),
    [("jpeg", "image/jpeg", "JPEG"), ("webp", "image/webp", "WEBP"), ("png", "image/png", "PNG")],
)
def test_upscale_output_format(client: TestClient, fmt: str, mime: str, pil: str) -> None:
    resp = post(client, format=fmt, quality="80")
    assert resp.status_code == 200 and resp.headers["content-type"] == mime
    assert decode_response(resp.content).format == pil


def test_upscale_jpeg_input_stays_jpeg(client: TestClient) -> None:
    buf = io.BytesIO()
    gradient_image().save(buf, "JPEG")
    resp = client.post("/upscale", content=buf.getvalue(), headers={"Content-Type": "image/jpeg"})
    assert resp.status_code == 200 and resp.headers["content-type"] == "image/jpeg"


def test_upscale_lanczos_by_name_is_not_a_fallback(client: TestClient) -> None:
    resp = post(client, model="lanczos", scale="2")
    assert resp.status_code == 200
    assert (resp.headers["x-upscaler"], resp.headers["x-upscale-backend"]) == ("lanczos", "pillow")
    assert "x-fallback-reason" not in resp.headers


def test_upscale_disabled_by_request(client: TestClient) -> None:
    resp = post(client, use_realesrgan="false")
    assert resp.status_code == 200 and resp.headers["x-fallback-reason"] == "disabled_by_request"
    assert resp.headers["x-upscaler"] == "lanczos" and resp.headers["x-output-size"] == "80x60"


def test_upscale_without_weights_falls_back_weights_missing(make_client: ClientFactory) -> None:
    client = make_client()
    resp = post(client)
    assert resp.status_code == 200
    assert (resp.headers["x-upscaler"], resp.headers["x-fallback-reason"]) == ("lanczos", "weights_missing")
    assert resp.headers["x-output-size"] == "80x60"  # 2 when no model says otherwise
    assert_error(post(client, fallback="false"), 503, "neural_unavailable")


def test_upscale_model_error_falls_back_and_logs_once(
    make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_client()
    add_stub(client, "flaky", error=RuntimeError("weights went bad"))
    with caplog.at_level(logging.WARNING, logger="app.service"):
        for _ in range(3):
            resp = post(client)
            assert resp.status_code == 200 and resp.headers["x-fallback-reason"] == "model_error"
    lines = [r for r in caplog.records if r.name == "app.service" and "model_error" in r.getMessage()]
    assert len(lines) == 1
    assert ok(client.get("/health")).json()["fallbacks"]["model_error"] == 3
    resp = post(client, fallback="false")
    assert_error(resp, 503, "neural_unavailable")
    assert resp.headers["x-fallback-reason"] == "model_error"


@pytest.mark.parametrize(
    "error", [MemoryError(), RuntimeError("CUDA out of memory. Tried to allocate 8 GiB")]
)
def test_upscale_out_of_memory_retries_then_falls_back(make_client: ClientFactory, error: Exception) -> None:
    client = make_client()
    runner = add_stub(client, "hungry", error=error)
    resp = post(client, data=png_bytes(gradient_image(300, 200)))
    assert resp.status_code == 200 and resp.headers["x-fallback-reason"] == "out_of_memory"
    assert runner.calls > 1  # the smaller tiles were tried first
    assert decode_response(resp.content).size == (600, 400)


@pytest.mark.parametrize(
    ("fields", "status", "type_"),
    [
        ({"scale": "9"}, 400, "invalid_parameter"),
        ({"scale": "1"}, 400, "invalid_parameter"),
        ({"scale": "2", "width": "10"}, 400, "invalid_parameter"),
        ({"width": "1000"}, 400, "invalid_parameter"),
        ({"format": "gif"}, 400, "invalid_parameter"),
        ({"quality": "0"}, 400, "invalid_parameter"),
        ({"model": "no-such-model"}, 400, "invalid_parameter"),
        ({"scale": "abc"}, 422, "validation_error"),
        ({"colour": "red"}, 422, "validation_error"),
    ],
)
def test_upscale_bad_parameters(client: TestClient, fields: dict, status: int, type_: str) -> None:
    assert_error(post(client, **fields), status, type_)


def test_upscale_bad_images(client: TestClient) -> None:
    assert_error(post(client, data=b"not an image at all"), 400, "invalid_image")
    assert_error(post(client, data=PNG[: len(PNG) // 2]), 400, "invalid_image")
    assert_error(
        client.post("/upscale", data={"scale": "2"}, files={"other": ("x", b"1")}), 400, "invalid_image"
    )
    assert_error(
        client.post("/upscale", content=b"", headers={"Content-Type": "image/png"}), 400, "invalid_image"
    )


def test_upscale_unsupported_media_type(client: TestClient) -> None:
    assert_error(
        client.post("/upscale", content=b"hello", headers={"Content-Type": "text/plain"}),
        415,
        "unsupported_media_type",
    )
    ico = io.BytesIO()
    gradient_image(16, 16).save(ico, "ICO")
    assert_error(post(client, data=ico.getvalue()), 415, "unsupported_media_type")


def test_upscale_huge_header_refused_before_decoding(client: TestClient) -> None:
    assert_error(post(client, data=crafted_png(60000, 60000)), 413, "image_too_large")


def test_upscale_output_over_limit(make_client: ClientFactory) -> None:
    client = make_client({"UPSCALER_MAX_OUTPUT_PIXELS": "10000"})
    assert_error(post(client, scale="4"), 413, "image_too_large")


def test_upscale_payload_too_large(make_client: ClientFactory) -> None:
    client = make_client({"UPSCALER_MAX_UPLOAD_MB": "0.001"})
    big = png_bytes(Image.effect_noise((64, 64), 60).convert("RGB"))
    assert len(big) > 1100
    assert_error(post(client, data=big), 413, "payload_too_large")
    assert_error(
        client.post("/upscale", content=big, headers={"Content-Type": "image/png"}), 413, "payload_too_large"
    )


def test_upscale_multipart_over_a_megabyte_stays_in_memory(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Starlette spools a file part past 1 MB to a temporary file (each chunk's write then hops to a
    worker thread); under the upload limit it stays in memory here."""
    rolled: list[int] = []
    real = tempfile.SpooledTemporaryFile.rollover

    def rollover(self: tempfile.SpooledTemporaryFile[bytes]) -> None:
        rolled.append(1)
        real(self)

    monkeypatch.setattr(tempfile.SpooledTemporaryFile, "rollover", rollover)
    big = png_bytes(Image.effect_noise((800, 800), 60).convert("RGB"))
    assert len(big) > 1 << 20
    resp = post(client, data=big, model="lanczos", scale="1.25")
    assert resp.status_code == 200, resp.text
    assert rolled == []


def test_upscale_api_key(make_client: ClientFactory, weights_dir: Path) -> None:
    client = make_client({"UPSCALER_API_KEY": "s3cret", "UPSCALER_WEIGHTS_DIR": str(weights_dir)})
    assert_error(post(client), 401, "unauthorized")
    resp = client.post(
        "/upscale", files={"image": ("in.png", PNG, "image/png")}, headers={"Authorization": "Bearer wrong"}
    )
    assert_error(resp, 401, "unauthorized")
    for headers in ({"Authorization": "Bearer s3cret"}, {"X-API-Key": "s3cret"}):
        resp = client.post("/upscale", files={"image": ("in.png", PNG, "image/png")}, headers=headers)
        assert resp.status_code == 200
    assert client.get("/health").status_code == 200  # health stays open


def test_upscale_queue_full_is_overloaded(make_client: ClientFactory) -> None:
    client = make_client({"UPSCALER_QUEUE_SIZE": "1"})
    gate = threading.Event()
    runner = add_stub(client, "slow", gate=gate)
    results: list = []

    def call() -> None:
        results.append(post(client))

    first = threading.Thread(target=call)
    first.start()
    assert runner.started.wait(10)
    second = threading.Thread(target=call)
    second.start()
    for _ in range(200):  # until the second request is waiting in the queue
        queues = ok(client.get("/health")).json()["queues"]
        if queues and queues[0]["in_flight"] == 2:
            break
        threading.Event().wait(0.02)
    third = post(client)
    gate.set()
    first.join(30)
    second.join(30)
    assert_error(third, 503, "overloaded")
    assert int(third.headers["retry-after"]) >= 1
    assert sorted(r.status_code for r in results) == [200, 200]


def test_upscale_timeout(make_client: ClientFactory) -> None:
    client = make_client({"UPSCALER_REQUEST_TIMEOUT_S": "0.3"})
    add_stub(client, "sleepy", delay_s=1.0)
    assert_error(post(client), 504, "timeout")
    assert client.get("/health/live").status_code == 200


def test_upscale_not_found_and_method_errors_are_json(client: TestClient) -> None:
    assert_error(client.get("/nope"), 404, "not_found")
    assert_error(client.get("/upscale"), 405, "method_not_allowed")
