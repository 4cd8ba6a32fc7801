"""/docs and /redoc work offline (assets served by the service), and the OpenAPI document describes
every operation: descriptions, examples, the API key's security schemes, X-Request-ID."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from app.config import load_settings
from app.main import create_app
from tests.support.http import ok

OPEN = {"/health", "/health/live", "/health/ready", "/metrics"}


@pytest.fixture(scope="module")
def schema() -> dict:
    return create_app(load_settings({})).openapi()


@pytest.mark.parametrize(
    ("page", "asset"), [("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")]
)
def test_docs_pages_load_their_assets_from_the_service(client: TestClient, page: str, asset: str) -> None:
    html = ok(client.get(page)).text
    urls = re.findall(r'(?:src|href)="([^"]+)"', html) + re.findall(r"url: '([^']+)'", html)
    assert urls and all(u.startswith("/") for u in urls), urls  # nothing from a CDN
    assert f"/docs-assets/{asset}" in urls
    for url in urls:
        resp = ok(client.get(url))
        assert len(resp.content) > 0
    assert len(ok(client.get(f"/docs-assets/{asset}")).content) > 100_000


def test_openapi_every_operation_has_a_description_and_an_example(schema: dict) -> None:
    for path, item in schema["paths"].items():
        for method, op in item.items():
            assert op.get("description"), f"{method.upper()} {path} has no description"
            text = str(op.get("requestBody", {})) + str(op.get("responses", {}))
            assert "example" in text, f"{method.upper()} {path} has no example"


def test_openapi_documents_the_api_key_as_security_schemes(schema: dict) -> None:
    schemes = schema["components"]["securitySchemes"]
    assert {s["type"] for s in schemes.values()} == {"http", "apiKey"}
    assert {s.get("scheme") for s in schemes.values()} >= {"bearer", "basic"}
    assert any(s.get("name") == "X-API-Key" and s.get("in") == "header" for s in schemes.values())
    for path, item in schema["paths"].items():
        for op in item.values():
            names = {name for requirement in op.get("security", []) for name in requirement}
            assert (names == set(schemes)) == (path not in OPEN), path


def test_openapi_documents_x_request_id_and_result_headers(schema: dict) -> None:
    for path, item in schema["paths"].items():
        for method, op in item.items():
            assert any(p["name"] == "X-Request-ID" and p["in"] == "header" for p in op["parameters"]), path
            for status, response in op["responses"].items():
                assert "X-Request-ID" in response.get("headers", {}), f"{method} {path} {status}"
    upscale = schema["paths"]["/upscale"]["post"]["responses"]["200"]["headers"]
    assert {"X-Upscaler", "X-Upscale-Backend", "X-Fallback-Reason", "X-Input-Size", "X-Output-Size"} <= set(
        upscale
    )


def test_openapi_swagger_can_authorize_with_the_key(make_client: object) -> None:
    """The key given the way Swagger's Authorize sends it (X-API-Key) opens the upload routes."""
    client = make_client({"UPSCALER_API_KEY": "k"})  # type: ignore[operator]
    resp = client.post("/sdapi/v1/txt2img", json={}, headers={"X-API-Key": "k"})
    assert resp.status_code == 501
    assert client.post("/sdapi/v1/txt2img", json={}).status_code == 401
