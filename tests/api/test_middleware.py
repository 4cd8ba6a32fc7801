"""Request ids, the JSON access log (one line per request) and CORS only when configured."""

from __future__ import annotations

import json
import logging
import re

import httpx2 as httpx
import pytest
from fastapi.testclient import TestClient

from app.config import SettingsError, load_settings
from app.middleware import request_id
from tests.conftest import ClientFactory
from tests.support.http import ok
from tests.support.images import gradient_image, png_bytes

PNG = png_bytes(gradient_image(40, 30))
HEX32 = re.compile(r"[0-9a-f]{32}")


def post(client: TestClient, headers: dict[str, str] | None = None, **fields: str) -> httpx.Response:
    return client.post(
        "/upscale", files={"image": ("in.png", PNG, "image/png")}, data=fields, headers=headers or {}
    )


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "app.access"]


@pytest.mark.parametrize("given", ["abc", "req-42.retry_1", "A" * 128, "0"])
def test_request_id_keeps_a_safe_id(given: str) -> None:
    assert request_id(given) == given


@pytest.mark.parametrize("given", [None, "", "A" * 129, "has space", "new\nline", 'quote"', "ünï", "a/b"])
def test_request_id_replaces_a_missing_or_unsafe_id(given: str | None) -> None:
    assert HEX32.fullmatch(request_id(given))


def test_request_id_echoed_on_every_response(client: TestClient) -> None:
    for resp in (
        post(client, {"X-Request-ID": "trace-1"}),
        post(client, {"X-Request-ID": "trace-1"}, scale="9"),  # 400
        client.get("/nope", headers={"X-Request-ID": "trace-1"}),  # 404
        client.get("/health", headers={"X-Request-ID": "trace-1"}),
        client.get("/metrics", headers={"X-Request-ID": "trace-1"}),
    ):
        assert resp.headers["x-request-id"] == "trace-1", resp.url


def test_request_id_generated_when_missing_or_unsafe(client: TestClient) -> None:
    first, second = client.get("/health/live"), client.get("/health/live")
    assert first.status_code == second.status_code == 200
    assert HEX32.fullmatch(first.headers["x-request-id"])
    assert first.headers["x-request-id"] != second.headers["x-request-id"]
    resp = client.get("/health/live", headers={"X-Request-ID": "<script>alert(1)</script>"})
    assert resp.status_code == 200 and HEX32.fullmatch(resp.headers["x-request-id"])


def test_request_id_on_unauthorized(make_client: ClientFactory) -> None:
    client = make_client({"UPSCALER_API_KEY": "k"})
    resp = post(client, {"X-Request-ID": "who-knocked"})
    assert resp.status_code == 401 and resp.headers["x-request-id"] == "who-knocked"


def test_access_log_one_json_line_per_request(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="app.access"):
        resp = post(client, {"X-Request-ID": "line-1"}, scale="4")
    assert resp.status_code == 200
    [line] = access_lines(caplog)
    assert line == {
        "request_id": "line-1",
        "method": "POST",
        "path": "/upscale",
        "route": "/upscale",
        "status": 200,
        "input_size": "40x30",
        "output_size": "160x120",
        "upscaler": "tiny-x4",
        "backend": "pytorch",
        "fallback_reason": None,
        "error": None,
        "ms": line["ms"],
    }
    assert isinstance(line["ms"], float) and line["ms"] > 0


def test_access_log_records_fallbacks_and_errors(
    make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_client()
    with caplog.at_level(logging.INFO, logger="app.access"):
        post(client)
        post(client, scale="9")
        client.get("/nope/7")
    ok, bad, missing = access_lines(caplog)
    assert (ok["status"], ok["upscaler"], ok["backend"]) == (200, "lanczos", "pillow")
    assert ok["fallback_reason"] == "weights_missing"
    assert (bad["status"], bad["error"], bad["upscaler"]) == (400, "invalid_parameter", None)
    assert (missing["status"], missing["route"], missing["path"]) == (404, "other", "/nope/7")
    assert HEX32.fullmatch(missing["request_id"])


def test_access_log_for_generate(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    import base64

    with caplog.at_level(logging.INFO, logger="app.access"):
        resp = client.post("/generate", json={"image": base64.b64encode(PNG).decode(), "hr_scale": 2})
    assert resp.status_code == 200
    info = resp.json()["info"]
    [line] = access_lines(caplog)
    assert (line["route"], line["output_size"]) == ("/generate", "80x64")
    assert (
        (line["upscaler"], line["backend"]) == (info["upscaler"], info["backend"]) == ("tiny-x4", "pytorch")
    )


PREFLIGHT = {
    "Origin": "https://app.example",
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization,content-type",
}


def test_cors_off_unless_configured(client: TestClient) -> None:
    resp = client.get("/health", headers={"Origin": "https://app.example"})
    assert resp.status_code == 200 and "access-control-allow-origin" not in resp.headers
    preflight = client.options("/upscale", headers=PREFLIGHT)
    assert preflight.status_code == 405 and "access-control-allow-origin" not in preflight.headers


def test_cors_allows_configured_origins_only(make_client: ClientFactory) -> None:
    client = make_client({"UPSCALER_CORS_ORIGINS": "https://app.example, http://localhost:3000"})
    preflight = client.options("/upscale", headers=PREFLIGHT)
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    resp = client.post(
        "/upscale",
        files={"image": ("in.png", PNG, "image/png")},
        headers={"Origin": "http://localhost:3000"},
    )
    assert resp.status_code == 200
    assert resp.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert "x-upscaler" in resp.headers["access-control-expose-headers"].lower()
    other = client.get("/health", headers={"Origin": "https://evil.example"})
    assert other.status_code == 200 and "access-control-allow-origin" not in other.headers
    assert (
        client.options("/upscale", headers={**PREFLIGHT, "Origin": "https://evil.example"}).status_code == 400
    )


def test_cors_any_origin(make_client: ClientFactory) -> None:
    client = make_client({"UPSCALER_CORS_ORIGINS": "*"})
    resp = client.get("/health", headers={"Origin": "https://anywhere.example"})
    assert resp.status_code == 200 and resp.headers["access-control-allow-origin"] == "*"


@pytest.mark.parametrize("value", ["app.example", "https://app.example/path", "ftp://x", "https://a b"])
def test_cors_origins_setting_bad_value_names_the_variable(value: str) -> None:
    with pytest.raises(SettingsError, match="UPSCALER_CORS_ORIGINS"):
        load_settings({"UPSCALER_CORS_ORIGINS": value})


def test_unexpected_error_still_logged_counted_and_tagged(
    make_client: ClientFactory, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = make_client(raise_server_exceptions=False)

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug, not bad input")

    monkeypatch.setattr(client.app.state.upscaler.service, "upscale", broken)  # type: ignore[attr-defined]
    with caplog.at_level(logging.INFO, logger="app.access"):
        resp = post(client, {"X-Request-ID": "bug-1"})
    assert resp.status_code == 500 and resp.json()["error"]["type"] == "internal_error"
    assert resp.headers["x-request-id"] == "bug-1"
    [line] = access_lines(caplog)
    assert (line["request_id"], line["status"], line["route"]) == ("bug-1", 500, "/upscale")
    assert (
        'upscaler_requests_total{method="POST",route="/upscale",status="500"} 1.0'
        in ok(client.get("/metrics")).text
    )
