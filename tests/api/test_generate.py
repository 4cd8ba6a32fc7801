"""POST /generate: the hires-fix hook."""

from __future__ import annotations

import base64

import pytest
from fastapi.testclient import TestClient

from tests.support.http import ok, server_timing
from tests.support.images import decode_response, gradient_image, png_bytes

IMG = png_bytes(gradient_image(60, 44), pnginfo=None)
B64 = base64.b64encode(IMG).decode()


def b64_size(text: str) -> tuple[int, int]:
    return decode_response(base64.b64decode(text)).size


def test_generate_single_image_rounds_to_latent_grid(client: TestClient) -> None:
    resp = client.post("/generate", json={"image": B64, "hr_scale": 2.0, "prompt": "a cat", "seed": 42})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert len(body["images"]) == 1
    assert b64_size(body["images"][0]) == (120, 88)
    info = body["info"]
    assert (info["upscaler"], info["backend"], info["fallback_reason"]) == ("tiny-x2", "pytorch", None)
    assert (info["input_size"], info["output_size"]) == ([60, 44], [120, 88])
    assert (info["prompt"], info["seed"], info["hires_fix"]) == ("a cat", 42, True)


def test_generate_non_multiple_of_8_sizes_are_rounded(client: TestClient) -> None:
    resp = client.post("/generate", json={"image": B64, "hr_scale": 1.5})
    assert resp.status_code == 200
    assert b64_size(resp.json()["images"][0]) == (88, 64)  # 90 -> 88, 66 -> 64


def test_generate_batch_with_data_urls(client: TestClient) -> None:
    other = base64.b64encode(png_bytes(gradient_image(32, 32))).decode()
    resp = client.post("/generate", json={"images": [f"data:image/png;base64,{B64}", other], "hr_scale": 2})
    assert resp.status_code == 200
    body = resp.json()
    assert [b64_size(i) for i in body["images"]] == [(120, 88), (64, 64)]
    assert [i["output_size"] for i in body["info"]["images_info"]] == [[120, 88], [64, 64]]
    # Each stage's time summed over the two images, inside the request's own time.
    timing = server_timing(resp)
    assert list(timing) == ["budget", "decode", "queue", "model", "encode"]
    assert 0 <= sum(timing.values()) <= body["info"]["elapsed_ms"] + 0.5


@pytest.mark.parametrize(
    ("resize", "size"),
    [
        ({"hr_resize_x": 100}, (104, 72)),
        ({"hr_resize_y": 100}, (136, 104)),
        ({"hr_resize_x": 100, "hr_resize_y": 100}, (104, 104)),
    ],
)
def test_generate_hr_resize_wins_over_scale(client: TestClient, resize: dict, size: tuple[int, int]) -> None:
    resp = client.post("/generate", json={"image": B64, "hr_scale": 4, **resize})
    assert resp.status_code == 200, resp.text
    assert b64_size(resp.json()["images"][0]) == size
    assert resp.json()["info"]["output_size"] == list(size)


def test_generate_hires_fix_false_returns_images_unchanged(client: TestClient) -> None:
    resp = client.post("/generate", json={"image": B64, "hires_fix": False})
    assert resp.status_code == 200
    assert resp.json()["images"] == [B64] and resp.json()["info"]["hires_fix"] is False


def test_generate_lanczos_when_disabled(client: TestClient) -> None:
    resp = ok(client.post("/generate", json={"image": B64, "use_realesrgan": False}))
    info = resp.json()["info"]
    assert (info["upscaler"], info["backend"], info["fallback_reason"]) == (
        "lanczos",
        "pillow",
        "disabled_by_request",
    )


def test_generate_named_upscaler(client: TestClient) -> None:
    resp = ok(client.post("/generate", json={"image": B64, "hr_upscaler": "tiny-x4", "hr_scale": 2}))
    assert resp.json()["info"]["upscaler"] == "tiny-x4"


def test_generate_echoes_unknown_fields(client: TestClient) -> None:
    extra = {"steps": 20, "sampler_name": "Euler a", "cfg_scale": 7.0, "denoising_strength": 0.5}
    resp = ok(client.post("/generate", json={"image": B64, **extra}))
    info = resp.json()["info"]
    assert all(info[k] == v for k, v in extra.items())


def test_generate_multipart(client: TestClient) -> None:
    resp = client.post(
        "/generate", files={"image": ("a.png", IMG, "image/png")}, data={"hr_scale": "2", "prompt": "x"}
    )
    assert resp.status_code == 200, resp.text
    assert b64_size(resp.json()["images"][0]) == (120, 88) and resp.json()["info"]["prompt"] == "x"


def test_generate_keeps_png_text_chunks(client: TestClient) -> None:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a cat, Steps: 20, Sampler: Euler a")
    data = base64.b64encode(png_bytes(gradient_image(40, 40), pnginfo=info)).decode()
    resp = ok(client.post("/generate", json={"image": data}))
    out = decode_response(base64.b64decode(resp.json()["images"][0]))
    assert out.text["parameters"] == "a cat, Steps: 20, Sampler: Euler a"  # type: ignore[attr-defined]


def test_generate_prompt_only_names_missing_image(client: TestClient) -> None:
    resp = client.post("/generate", json={"prompt": "a castle", "seed": 1})
    assert resp.status_code == 422
    err = resp.json()["error"]
    assert err["type"] == "validation_error" and "image" in err["message"]


@pytest.mark.parametrize(
    ("body", "status", "type_"),
    [
        ({"image": "%%%not-base64%%%"}, 400, "invalid_image"),
        ({"image": base64.b64encode(b"not an image").decode()}, 400, "invalid_image"),
        ({"image": B64, "hr_scale": 9}, 400, "invalid_parameter"),
        ({"image": B64, "hr_scale": "big"}, 422, "validation_error"),
        ({"image": B64, "hr_resize_x": -5}, 422, "validation_error"),
        ({"images": "not-a-list"}, 422, "validation_error"),
    ],
)
def test_generate_bad_requests(client: TestClient, body: dict, status: int, type_: str) -> None:
    resp = client.post("/generate", json=body)
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]["type"] == type_


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{broken", "body is not valid JSON: key must be a string at line 1 column 2"),
        (b"", "body is not valid JSON: EOF while parsing a value"),
        (b"\xff\xfe", "body is not valid JSON: expected value"),
        (b"[1, 2]", "body must be a JSON object"),
        (b'{"image": 3}', "image: Input should be a valid string"),
    ],
)
def test_generate_rejects_what_is_not_its_json(client: TestClient, body: bytes, message: str) -> None:
    resp = client.post("/generate", content=body, headers={"Content-Type": "application/json"})
    assert resp.status_code == 422 and resp.json()["error"]["type"] == "validation_error"
    assert resp.json()["error"]["message"].startswith(message)


def test_generate_rejects_other_media_types(client: TestClient) -> None:
    resp = client.post("/generate", content=b"x", headers={"Content-Type": "text/plain"})
    assert resp.status_code == 415


def test_generate_hr_scale_one_resizes_without_a_model(client: TestClient) -> None:
    on_grid = base64.b64encode(png_bytes(gradient_image(64, 48))).decode()
    resp = ok(client.post("/generate", json={"image": on_grid, "hr_scale": 1.0}))
    info = resp.json()["info"]
    assert (info["upscaler"], info["fallback_reason"], info["output_size"]) == ("lanczos", None, [64, 48])


def test_generate_lists_unimplemented_options_as_ignored(client: TestClient) -> None:
    resp = ok(client.post("/generate", json={"image": B64, "use_face_restoration": True, "steps": 30}))
    info = resp.json()["info"]
    assert info["ignored"] == ["use_face_restoration"]
    assert "use_face_restoration" not in info and info["steps"] == 30  # others are echoed
    plain = ok(client.post("/generate", json={"image": B64, "use_face_restoration": False})).json()["info"]
    assert "ignored" not in plain and "use_face_restoration" not in plain
