"""A1111-compatible routes with A1111's documented raw payloads: the upscaler list, extras for one image
and a batch in both resize modes, upscaler_2 blending, the resize_mode 1 pitfall, limits and 501s."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import httpx2 as httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.conftest import ClientFactory
from tests.support.http import ok, server_timing
from tests.support.images import decode_response, gradient_image, png_bytes

IMG = gradient_image(40, 30)
B64 = base64.b64encode(png_bytes(IMG)).decode()


def extras(client: TestClient, **payload: object) -> httpx.Response:
    return client.post("/sdapi/v1/extra-single-image", json={"image": B64, **payload})


def image_of(b64: str) -> Image.Image:
    return decode_response(base64.b64decode(b64))


def test_sdapi_upscalers_lists_a1111_names_then_models(client: TestClient) -> None:
    items = ok(client.get("/sdapi/v1/upscalers")).json()
    assert [i["name"] for i in items] == ["None", "Lanczos", "Nearest", "tiny-x2", "tiny-x4"]
    assert set(items[0]) == {"name", "model_name", "model_path", "model_url", "scale"}
    tiny = items[-1]
    assert (tiny["model_name"], tiny["model_path"], tiny["scale"]) == ("RRDBNet", "tiny-x4.pth", 4)


def test_sdapi_extra_single_image_scales_with_a_model(client: TestClient) -> None:
    resp = ok(extras(client, upscaler_1="tiny-x4", upscaling_resize=4))
    body = resp.json()
    assert set(body) == {"html_info", "image"}
    out = image_of(body["image"])
    assert out.format == "PNG" and out.size == (160, 120)
    assert "tiny-x4 (pytorch)" in body["html_info"] and "Fallback" not in body["html_info"]


@pytest.mark.parametrize(("crop", "size"), [(True, (100, 60)), (False, (100, 75))], ids=["crop", "cover"])
def test_sdapi_resize_mode_1_covers_and_crops(client: TestClient, crop: bool, size: tuple[int, int]) -> None:
    body = ok(
        extras(
            client,
            resize_mode=1,
            upscaling_resize_w=100,
            upscaling_resize_h=60,
            upscaling_crop=crop,
            upscaler_1="Lanczos",
        )
    ).json()
    assert image_of(body["image"]).size == size
    assert "lanczos (pillow)" in body["html_info"]


def test_sdapi_resize_mode_1_with_only_upscaling_resize_scales_by_it(client: TestClient) -> None:
    """A1111 returns such a request unchanged; its senders mean "scale by upscaling_resize"."""
    body = ok(extras(client, resize_mode=1, upscaling_resize=3, upscaler_1="Lanczos")).json()
    assert image_of(body["image"]).size == (120, 90)


def test_sdapi_upscaler_none_returns_the_image_unchanged(client: TestClient) -> None:
    body = ok(extras(client, upscaling_resize=2)).json()  # upscaler_1 defaults to "None", as in A1111
    assert np.array_equal(np.asarray(image_of(body["image"])), np.asarray(IMG))
    assert "None (image unchanged)" in body["html_info"]


def test_sdapi_nearest_repeats_pixels(client: TestClient) -> None:
    body = ok(extras(client, upscaler_1="Nearest", upscaling_resize=2)).json()
    out = np.asarray(image_of(body["image"]))
    assert out.shape == (60, 80, 3)
    assert np.array_equal(out[::2, ::2], np.asarray(IMG)) and np.array_equal(out[1::2, 1::2], np.asarray(IMG))


def test_sdapi_upscaler_2_is_blended_by_its_visibility(client: TestClient) -> None:
    one = image_of(ok(extras(client, upscaler_1="tiny-x2", upscaling_resize=2)).json()["image"])
    two = image_of(ok(extras(client, upscaler_1="Nearest", upscaling_resize=2)).json()["image"])
    body = ok(
        extras(
            client,
            upscaler_1="tiny-x2",
            upscaler_2="Nearest",
            extras_upscaler_2_visibility=0.25,
            upscaling_resize=2,
        )
    ).json()
    mixed = np.asarray(image_of(body["image"])).astype(int)
    expected = np.asarray(Image.blend(one, two, 0.25)).astype(int)
    assert np.abs(mixed - expected).max() <= 1
    assert "upscaler 2: nearest (pillow)" in body["html_info"] and "visibility: 0.25" in body["html_info"]


def test_sdapi_answers_say_where_their_time_went(client: TestClient) -> None:
    """Both upscalers' stages are summed: the model's and Nearest's (which has no queue or model)."""
    resp = ok(extras(client, upscaler_1="tiny-x2", upscaler_2="Nearest", extras_upscaler_2_visibility=0.5))
    assert list(server_timing(resp)) == ["budget", "decode", "queue", "model", "encode"]
    none = ok(extras(client, upscaler_1="None"))
    assert "server-timing" not in none.headers  # nothing ran


def test_sdapi_html_info_names_a_fallback_and_ignored_face_restoration(make_client: ClientFactory) -> None:
    client = make_client()  # no models: auto falls back to LANCZOS
    body = ok(extras(client, upscaler_1="auto", upscaling_resize=2, gfpgan_visibility=0.5)).json()
    assert image_of(body["image"]).size == (80, 60)
    assert "Fallback: LANCZOS (weights_missing) instead of auto" in body["html_info"]
    assert "Ignored (not available in this service): gfpgan_visibility" in body["html_info"]


def test_sdapi_extra_batch_images(client: TestClient) -> None:
    other = base64.b64encode(png_bytes(gradient_image(20, 10, "L"))).decode()
    payload = {
        "imageList": [
            {"data": B64, "name": "a.png"},
            {"data": f"data:image/png;base64,{other}", "name": "b"},
        ],
        "upscaler_1": "tiny-x2",
        "upscaling_resize": 2,
    }
    body = ok(client.post("/sdapi/v1/extra-batch-images", json=payload)).json()
    assert [image_of(i).size for i in body["images"]] == [(80, 60), (40, 20)]
    assert image_of(body["images"][1]).mode == "L" and "tiny-x2" in body["html_info"]


def test_sdapi_batch_cap_is_413(make_client: ClientFactory, weights_dir: Path) -> None:
    client = make_client({"UPSCALER_WEIGHTS_DIR": str(weights_dir), "UPSCALER_MAX_BATCH": "2"})
    payload = {"imageList": [{"data": B64, "name": str(i)} for i in range(3)], "upscaler_1": "Lanczos"}
    resp = client.post("/sdapi/v1/extra-batch-images", json=payload)
    assert resp.status_code == 413 and "UPSCALER_MAX_BATCH" in resp.json()["error"]["message"]


@pytest.mark.parametrize(
    ("payload", "status", "type_"),
    [
        ({"image": "not base64!"}, 400, "invalid_image"),
        ({"image": ""}, 400, "invalid_image"),
        ({"resize_mode": 2}, 422, "validation_error"),
        ({"upscaling_resize": 9}, 422, "validation_error"),
        ({"upscaler_1": "no-such-model"}, 400, "invalid_parameter"),
    ],
)
def test_sdapi_bad_payloads(client: TestClient, payload: dict, status: int, type_: str) -> None:
    resp = client.post("/sdapi/v1/extra-single-image", json={"image": B64, **payload})
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]["type"] == type_


@pytest.mark.parametrize("route", ["txt2img", "img2img"])
def test_sdapi_generation_routes_answer_501_pointing_to_generate(client: TestClient, route: str) -> None:
    resp = client.post(f"/sdapi/v1/{route}", json={"prompt": "a cat"})
    assert resp.status_code == 501
    assert (
        resp.json()["error"]["type"] == "not_implemented" and "/generate" in resp.json()["error"]["message"]
    )


def test_sdapi_api_key_bearer_or_basic(make_client: ClientFactory, weights_dir: Path) -> None:
    client = make_client({"UPSCALER_WEIGHTS_DIR": str(weights_dir), "UPSCALER_API_KEY": "s3cret"})
    assert extras(client, upscaler_1="Lanczos").status_code == 401
    basic = base64.b64encode(b"anyone:s3cret").decode()
    resp = client.post(
        "/sdapi/v1/extra-single-image",
        json={"image": B64, "upscaler_1": "Lanczos"},
        headers={"Authorization": f"Basic {basic}"},
    )
    assert resp.status_code == 200
    wrong = base64.b64encode(b"anyone:nope").decode()
    resp = client.post("/sdapi/v1/txt2img", json={}, headers={"Authorization": f"Basic {wrong}"})
    assert resp.status_code == 401


def test_sdapi_counts_in_metrics(client: TestClient) -> None:
    ok(extras(client, upscaler_1="Lanczos", upscaling_resize=2))
    text = ok(client.get("/metrics")).text
    assert (
        'upscaler_requests_total{method="POST",route="/sdapi/v1/extra-single-image",status="200"} 1.0' in text
    )


def test_sdapi_output_is_png_whatever_came_in(client: TestClient) -> None:
    buf = io.BytesIO()
    IMG.save(buf, "JPEG")
    resp = client.post(
        "/sdapi/v1/extra-single-image",
        json={"image": base64.b64encode(buf.getvalue()).decode(), "upscaler_1": "Lanczos"},
    )
    assert ok(resp).status_code == 200 and image_of(resp.json()["image"]).format == "PNG"
