"""Fuzzing, bounded and reproducible: schemathesis against the app's own OpenAPI schema, and hypothesis
over image sizes, modes, formats and scales through the whole pipeline (tiny random-weight models).

Every test has a fixed example count, is derandomized and keeps no example database, so CI sees the same
cases on every run.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import example, given, settings
from hypothesis import strategies as st
from PIL import Image
from schemathesis.checks import CheckFunction, not_a_server_error
from schemathesis.python import asgi as schemathesis_asgi
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from app.config import load_settings
from app.main import create_app
from app.schemas import UpscaleOptions
from tests.support.checkpoints import tiny_state_dict, write_checkpoint
from tests.support.images import decode_response, gradient_image


def bounded(max_examples: int) -> settings:
    return settings(max_examples=max_examples, deadline=None, derandomize=True, database=None)


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The conftest `weights_dir` models (tiny x2 and x4), for module-scoped apps."""
    d = tmp_path_factory.mktemp("weights")
    write_checkpoint(tiny_state_dict(2, seed=1), d / "tiny-x2", "safetensors")
    write_checkpoint(tiny_state_dict(4, seed=2), d / "tiny-x4", "params_ema")
    return d


def tiny_app(weights: Path) -> FastAPI:
    return create_app(load_settings({"UPSCALER_WEIGHTS_DIR": str(weights)}), background_load=False)


@pytest.fixture(scope="module")
def fuzz_client(tiny_weights: Path) -> Iterator[TestClient]:
    """One started app for all examples: hypothesis reruns a test body, not its fixtures."""
    with TestClient(tiny_app(tiny_weights)) as client:
        yield client


# -- schemathesis: every operation against the app's own schema ---------------------------------------

# The schema comes from an app built without settings (nothing loads before the lifespan runs); requests
# go to `served_app`, whose lifespan schemathesis starts on the first call. `from_asgi` at import would
# start a lifespan with the process environment's settings, and `schemathesis.pytest.from_fixture` does
# not work with pytest 9 (it sets `Function._nodeid`, which pytest 9 no longer has).
SCHEMA = schemathesis.openapi.from_dict(
    create_app().openapi(),
    config=schemathesis.Config.from_dict(
        # A schema-valid request may still be refused for what a schema cannot say: bytes that are no
        # image (400 invalid_image), scale together with width (400 invalid_parameter), an output over
        # the pixel limit (413). Anything else, 422 above all, means the schema and the app disagree.
        {"checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "400", "413"]}}}
    ),
)
# /upscale also accepts these as raw bodies; schemathesis has no serializer for them and would skip the
# cases with a warning. They go as raw bytes, like application/octet-stream.
schemathesis.serializer.alias(["image/bmp", "image/jpg", "image/tiff"], "application/octet-stream")

# Form fields and query parameters are text, parsed leniently on purpose (pydantic: "0"/"no"/"off" are
# booleans, `format=` means the default), so "schema-violating data must be refused" only holds for JSON
# bodies and operations without a body.
TEXT_ENCODED_BODIES = {"multipart/form-data", "application/octet-stream"}


@pytest.fixture(scope="module")
def served_app(tiny_weights: Path) -> Iterator[FastAPI]:
    yield tiny_app(tiny_weights)
    schemathesis_asgi.shutdown_lifespans()  # schemathesis keeps an app's lifespan running until told


@SCHEMA.parametrize()
@bounded(40)
def test_api_conforms_to_its_openapi_schema(case: schemathesis.Case, served_app: FastAPI) -> None:
    response = case.call(app=served_app)
    generation = case.path in ("/sdapi/v1/txt2img", "/sdapi/v1/img2img")  # documented 501s
    assert response.status_code < 500 or (generation and response.status_code == 501), response.text
    text_body = case.media_type is not None and (
        case.media_type in TEXT_ENCODED_BODIES or case.media_type.startswith("image/")
    )
    excluded: list[CheckFunction] = [negative_data_rejection] if text_body else []
    if generation:  # they accept nothing: every request, valid or not, is answered 501
        excluded += [positive_data_acceptance, not_a_server_error]
    case.validate_response(response, excluded_checks=excluded or None, transport_kwargs={"app": served_app})


def test_openapi_upscale_options_match_the_params_model() -> None:
    operation = create_app().openapi()["paths"]["/upscale"]["post"]
    assert {p["name"] for p in operation["parameters"] if p["in"] == "query"} == set(
        UpscaleOptions.model_fields
    )


# -- hypothesis: sizes, modes and formats through POST /upscale ---------------------------------------

MODES_BY_FORMAT = {
    "PNG": ("RGB", "RGBA", "L", "LA", "P", "P+tRNS", "I;16", "1"),
    "JPEG": ("RGB", "L", "CMYK"),
    "WEBP": ("RGB", "RGBA"),
}
# The mode the pipeline works in, and so what a PNG output holds.
WORKING_MODE = {"RGB": "RGB", "RGBA": "RGBA", "L": "L", "LA": "LA", "I;16": "I;16", "1": "L", "CMYK": "RGB"}
WORKING_MODE.update({"P": "RGB", "P+tRNS": "RGBA"})  # a palette with a transparent entry has alpha
# PNG IHDR (colour type, bit depth) per mode.
PNG_LAYOUT = {"L": (0, 8), "RGB": (2, 8), "LA": (4, 8), "RGBA": (6, 8), "I;16": (0, 16)}
MEDIA_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
MODELS = ("auto", "lanczos", "no-neural", "tiny-x2", "tiny-x4")


def make_image(w: int, h: int, mode: str) -> Image.Image:
    """A w x h picture in `mode` ("P+tRNS": a palette image with a transparent entry). Alpha is never
    fully opaque (libwebp drops an opaque alpha plane); 16-bit gray has values 8 bits cannot hold."""
    y, x = np.mgrid[0:h, 0:w]
    if mode == "I;16":
        return Image.fromarray(((x * 4099 + y * 7919 + 3) % 65536).astype(np.uint16))
    img = gradient_image(w, h, "RGB")
    if mode == "P+tRNS":
        img = img.convert("P")
        img.info["transparency"] = img.getpixel((0, 0))
        return img
    if mode in ("RGBA", "LA"):
        img = img.convert(mode[:-1])
        img.putalpha(Image.fromarray(((x * 37 + y * 11) % 200 + 30).astype(np.uint8), "L"))
        return img
    return img.convert(mode)


def encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


@dataclass(frozen=True)
class Upload:
    width: int
    height: int
    mode: str
    fmt: str  # the input's format: PNG, JPEG or WEBP
    model: str  # one of MODELS
    size: tuple[str, float | int | None, int | None]  # ("scale", s, None) | ("size", width, height)
    out: str | None  # the `format` option
    multipart: bool
    quality: int | None = None

    def fields(self) -> dict[str, str]:
        fields = {}
        if self.model == "no-neural":
            fields["use_realesrgan"] = "false"
        elif self.model != "auto":
            fields["model"] = self.model
        kind, a, b = self.size
        if kind == "scale" and a is not None:
            fields["scale"] = repr(a)
        if kind == "size":
            fields.update({k: str(v) for k, v in (("width", a), ("height", b)) if v is not None})
        if self.out:
            fields["format"] = self.out
        if self.quality is not None:
            fields["quality"] = str(self.quality)
        return fields


@st.composite
def uploads(draw: st.DrawFn) -> Upload:
    w, h = draw(st.integers(1, 64)), draw(st.integers(1, 64))
    fmt = draw(st.sampled_from(sorted(MODES_BY_FORMAT)))
    scale = st.one_of(
        st.sampled_from([None, 1.5, 2, 3, 4, 8, 2.5, 1.01, 7.99]),
        st.floats(1, 8, exclude_min=True, allow_nan=False),
    )
    # Up to a bit over 8x, so a too-large size (400) is drawn too.
    side = st.one_of(st.none(), st.integers(1, 9 * max(w, h)))
    size = draw(
        st.one_of(
            st.tuples(st.just("scale"), scale, st.none()),
            st.tuples(st.just("size"), side, side).filter(lambda s: s[1:] != (None, None)),
        )
    )
    return Upload(
        w,
        h,
        draw(st.sampled_from(MODES_BY_FORMAT[fmt])),
        fmt,
        draw(st.sampled_from(MODELS)),
        size,
        draw(st.sampled_from([None, "png", "jpeg", "webp"])),
        draw(st.booleans()),
        draw(st.none() | st.integers(1, 100)),
    )


def promised_size(u: Upload) -> tuple[int, int] | None:
    """SPEC: round(w*s), round(h*s); or width/height, one of them keeping the aspect ratio. None when
    that is more than 8x the input, which must be refused with 400."""
    w, h = u.width, u.height
    kind, a, b = u.size
    if kind == "scale":
        s = a if a is not None else (4 if u.model == "tiny-x4" else 2)  # default: the model's own scale
        tw, th = max(1, round(w * s)), max(1, round(h * s))
    else:
        tw = int(a) if a is not None else max(1, round(w * b / h))  # type: ignore[operator]
        th = int(b) if b is not None else max(1, round(h * a / w))  # type: ignore[operator]
    return (tw, th) if max(tw / w, th / h) <= 8 else None


def promised_layout(u: Upload, out_fmt: str) -> str:
    """The output's mode: alpha, gray and 16 bits are kept where the format can hold them."""
    working = WORKING_MODE[u.mode]
    if out_fmt == "JPEG":  # no alpha, 8 bits
        return {"RGBA": "RGB", "LA": "L", "I;16": "L"}.get(working, working)
    if out_fmt == "WEBP":  # no gray, 8 bits
        return {"L": "RGB", "LA": "RGBA", "I;16": "RGB"}.get(working, working)
    return working


def post_upscale(client: TestClient, data: bytes, media_type: str, fields: dict[str, str], multipart: bool):
    if multipart:
        return client.post("/upscale", files={"image": ("in", data, media_type)}, data=fields)
    return client.post("/upscale", params=fields, content=data, headers={"Content-Type": media_type})


@given(uploads())
@example(Upload(1, 1, "RGB", "PNG", "auto", ("scale", None, None), None, True))
@example(Upload(1, 1, "RGBA", "PNG", "tiny-x4", ("scale", 8, None), "webp", False))
@example(Upload(1, 1, "I;16", "PNG", "auto", ("scale", 1.5, None), None, True))
@example(Upload(1, 7, "LA", "PNG", "auto", ("size", 8, None), "jpeg", True))
@example(Upload(33, 1, "L", "JPEG", "tiny-x2", ("scale", 2.5, None), "webp", True))
@example(Upload(5, 3, "CMYK", "JPEG", "auto", ("size", 11, 7), None, False))
@example(Upload(17, 9, "P", "PNG", "auto", ("scale", 7.99, None), None, True))
@example(Upload(3, 5, "1", "PNG", "lanczos", ("size", None, 40), None, True))
@example(Upload(2, 2, "I;16", "PNG", "tiny-x4", ("size", 15, None), "png", True, 1))
@example(Upload(1, 1, "P+tRNS", "PNG", "auto", ("scale", 3, None), "webp", False, 100))
@bounded(60)
def test_upscale_output_has_the_promised_size_and_mode(fuzz_client: TestClient, u: Upload) -> None:
    data = encode(make_image(u.width, u.height, u.mode), u.fmt)
    resp = post_upscale(fuzz_client, data, MEDIA_TYPES[u.fmt], u.fields(), u.multipart)
    size = promised_size(u)
    if size is None:
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["type"] == "invalid_parameter"
        return
    assert resp.status_code == 200, resp.text
    out_fmt = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[u.out] if u.out else u.fmt
    assert resp.headers["content-type"] == MEDIA_TYPES[out_fmt]
    assert resp.headers["x-output-size"] == "{}x{}".format(*size)
    assert resp.headers["x-input-size"] == f"{u.width}x{u.height}"
    enlarges = max(size[0] / u.width, size[1] / u.height) > 1
    # auto never runs a model for a pure reduction; a named model runs as asked.
    neural = u.model not in ("lanczos", "no-neural") and (enlarges or u.model != "auto")
    assert (resp.headers["x-upscale-backend"] == "pytorch") == neural
    img = decode_response(resp.content)
    assert (img.format, img.size) == (out_fmt, size)
    layout = promised_layout(u, out_fmt)
    if out_fmt == "PNG":
        assert (resp.content[25], resp.content[24]) == PNG_LAYOUT[layout]  # IHDR colour type, bit depth
    else:
        assert img.mode == layout


# -- hypothesis: second-pass sizes through POST /generate ---------------------------------------------


def near_grid(side: int, wanted: float) -> bool:
    """A multiple of 8 (the latent grid) nearest to `wanted`, at least 8."""
    return side % 8 == 0 and side >= 8 and (abs(side - wanted) <= 4 or (side == 8 and wanted < 8))


def grid(v: float) -> int:
    """The multiple of 8 nearest to v (halves up), at least 8."""
    return max(8, 8 * math.floor(v / 8 + 0.5))


@dataclass(frozen=True)
class HiresRequest:
    width: int
    height: int
    mode: str
    hr_scale: float | None  # None: hr_resize_x / hr_resize_y are used
    resize: tuple[int, int]
    hires_fix: bool
    upscaler: str

    def body(self, image: bytes) -> dict[str, object]:
        body: dict[str, object] = {"image": base64.b64encode(image).decode(), "hires_fix": self.hires_fix}
        if self.hr_scale is not None:
            body["hr_scale"] = self.hr_scale
        body["hr_resize_x"], body["hr_resize_y"] = self.resize
        if self.upscaler == "no-neural":
            body["use_realesrgan"] = False
        else:
            body["hr_upscaler"] = self.upscaler
        return body


@st.composite
def hires_requests(draw: st.DrawFn) -> HiresRequest:
    w, h = draw(st.integers(1, 64)), draw(st.integers(1, 64))
    by_scale = draw(st.booleans())
    hr_scale = draw(st.floats(1, 8, allow_nan=False)) if by_scale else None
    resize = (0, 0)
    if not by_scale:
        side = st.integers(0, 9 * max(w, h))
        resize = draw(st.tuples(side, side).filter(lambda r: r != (0, 0)))
    return HiresRequest(
        w,
        h,
        draw(st.sampled_from(["RGB", "RGBA", "L"])),
        hr_scale,
        resize,
        draw(st.sampled_from([True, True, True, False])),  # hires_fix: mostly on
        draw(st.sampled_from(["auto", "lanczos", "no-neural", "tiny-x4"])),
    )


@given(hires_requests())
@example(HiresRequest(1, 1, "RGB", 1.0, (0, 0), True, "auto"))
@example(HiresRequest(1, 1, "RGBA", 8.0, (0, 0), True, "tiny-x4"))
@example(HiresRequest(3, 5, "L", 1.5, (0, 0), True, "auto"))
@example(HiresRequest(7, 3, "RGB", None, (20, 0), True, "auto"))
@example(HiresRequest(7, 3, "RGB", None, (0, 20), True, "lanczos"))
@example(HiresRequest(31, 17, "RGBA", None, (61, 45), True, "auto"))
@example(HiresRequest(9, 9, "RGB", 2.0, (0, 0), False, "auto"))
@bounded(40)
def test_generate_second_pass_is_on_the_latent_grid(fuzz_client: TestClient, r: HiresRequest) -> None:
    image = encode(make_image(r.width, r.height, r.mode), "PNG")
    resp = fuzz_client.post("/generate", json=r.body(image))
    w, h = r.width, r.height
    if not r.hires_fix:
        assert resp.status_code == 200, resp.text
        assert resp.json()["images"] == [base64.b64encode(image).decode()]
        assert resp.json()["info"]["output_size"] == [w, h]
        return
    rx, ry = r.resize
    if r.hr_scale is not None:
        wanted = (w * r.hr_scale, h * r.hr_scale)
    elif ry == 0:
        wanted = (rx, rx * h / w)
    elif rx == 0:
        wanted = (ry * w / h, ry)
    else:
        wanted = (rx, ry)
    # Both resize sides given: the exact size, cover-resized then centre-cropped. Over 8x is refused.
    if max(grid(wanted[0]) / w, grid(wanted[1]) / h) > 8:
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["type"] == "invalid_parameter"
        return
    assert resp.status_code == 200, resp.text
    body = resp.json()
    out_w, out_h = body["info"]["output_size"]
    assert near_grid(out_w, wanted[0]) and near_grid(out_h, wanted[1]), (out_w, out_h, wanted)
    assert body["info"]["input_size"] == [w, h]
    img = decode_response(base64.b64decode(body["images"][0]))
    assert (img.format, img.size, img.mode) == ("PNG", (out_w, out_h), r.mode)
