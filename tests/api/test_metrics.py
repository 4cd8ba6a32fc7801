"""GET /metrics: Prometheus text that parses, per-app registries, and counts that follow the requests."""

from __future__ import annotations

from pathlib import Path

import httpx2 as httpx
from fastapi.testclient import TestClient

from tests.conftest import ClientFactory
from tests.support.http import scrape, value
from tests.support.images import gradient_image, png_bytes
from tests.support.stubs import add_stub

PNG = png_bytes(gradient_image(40, 30))


def post(client: TestClient, **fields: str) -> httpx.Response:
    return client.post("/upscale", files={"image": ("in.png", PNG, "image/png")}, data=fields)


def test_metrics_count_requests_by_route_template_and_status(client: TestClient) -> None:
    before = scrape(client)
    assert value(before, "upscaler_requests_total", route="/upscale", method="POST", status="200") == 0
    assert post(client).status_code == 200
    assert post(client, scale="9").status_code == 400
    after = scrape(client)
    assert value(after, "upscaler_requests_total", route="/upscale", method="POST", status="200") == 1
    assert value(after, "upscaler_requests_total", route="/upscale", method="POST", status="400") == 1
    assert value(after, "upscaler_request_duration_seconds_count", route="/upscale") == 2
    # The earlier scrape counted itself too.
    assert value(after, "upscaler_requests_total", route="/metrics", method="GET", status="200") == 1


def test_metrics_label_unknown_paths_other_never_the_raw_url(client: TestClient) -> None:
    assert client.get("/no/such/path/12345").status_code == 404
    samples = scrape(client)
    assert value(samples, "upscaler_requests_total", route="other", method="GET", status="404") == 1
    routes = {dict(labels).get("route") for name, labels in samples if name == "upscaler_requests_total"}
    assert not any("12345" in str(r) for r in routes)


def test_metrics_inference_histogram_and_model_availability(client: TestClient) -> None:
    assert value(scrape(client), "upscaler_inference_seconds_count", model="tiny-x2", backend="pytorch") == 0
    assert post(client).status_code == 200
    samples = scrape(client)
    assert value(samples, "upscaler_inference_seconds_count", model="tiny-x2", backend="pytorch") == 1
    assert value(samples, "upscaler_inference_seconds_sum", model="tiny-x2", backend="pytorch") > 0
    assert value(samples, "upscaler_model_available", model="tiny-x2", backend="pytorch") == 1
    assert value(samples, "upscaler_model_available", model="tiny-x4", backend="pytorch") == 1
    assert value(samples, "upscaler_queue_capacity", device="cpu") == 16
    assert ("upscaler_queue_depth", frozenset({("device", "cpu")})) in samples
    assert value(samples, "upscaler_ready") == 1 and value(samples, "upscaler_draining") == 0


def test_metrics_unavailable_model_reads_zero(make_client: ClientFactory, tmp_path: Path) -> None:
    weights = tmp_path / "bad-weights"
    weights.mkdir()
    (weights / "broken.pth").write_bytes(b"not a checkpoint")
    client = make_client({"UPSCALER_WEIGHTS_DIR": str(weights)})
    samples = scrape(client)
    key = ("upscaler_model_available", frozenset({("model", "broken"), ("backend", "pytorch")}))
    assert key in samples and samples[key] == 0


def test_metrics_fallback_increments_reason_counter(make_client: ClientFactory) -> None:
    client = make_client()  # no weights: every neural request falls back
    before = scrape(client)
    assert value(before, "upscaler_fallbacks_total", reason="weights_missing") == 0
    assert value(before, "upscaler_fallbacks_total", reason="model_error") == 0
    assert post(client).headers["x-fallback-reason"] == "weights_missing"
    assert post(client).headers["x-fallback-reason"] == "weights_missing"
    assert post(client, use_realesrgan="false").headers["x-fallback-reason"] == "disabled_by_request"
    add_stub(client, "flaky", error=RuntimeError("weights went bad"))
    assert post(client).headers["x-fallback-reason"] == "model_error"
    after = scrape(client)
    assert value(after, "upscaler_fallbacks_total", reason="weights_missing") == 2
    assert value(after, "upscaler_fallbacks_total", reason="disabled_by_request") == 1
    assert value(after, "upscaler_fallbacks_total", reason="model_error") == 1


def test_metrics_registries_are_per_app(make_client: ClientFactory) -> None:
    one, two = make_client(), make_client()
    assert post(one).status_code == 200
    assert value(scrape(one), "upscaler_requests_total", route="/upscale", method="POST", status="200") == 1
    assert value(scrape(two), "upscaler_requests_total", route="/upscale", method="POST", status="200") == 0


def test_metrics_stay_open_when_an_api_key_is_set(make_client: ClientFactory) -> None:
    client = make_client({"UPSCALER_API_KEY": "s3cret"})
    assert post(client).status_code == 401
    samples = scrape(client)  # no key sent
    assert value(samples, "upscaler_requests_total", route="/upscale", method="POST", status="401") == 1
    assert client.get("/health/live").status_code == 200
