"""POST /generate: the upscale step of a two-pass hires fix (A1111 API field names)."""

from __future__ import annotations

import base64
import binascii
import json
import math
import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.datastructures import UploadFile

from app.api.deps import (
    StateDep,
    cancel_on_disconnect,
    parse_multipart,
    read_body,
    require_api_key,
    validate_model,
)
from app.errors import InvalidImage, InvalidParameter, UnsupportedMediaType, ValidationFailed
from app.imaging import probe
from app.middleware import note_result
from app.schemas import GenerateRequest, GenerateResponse, error_responses
from app.service import MAX_SCALE, Options, Target

router = APIRouter()

LATENT_GRID = 8

# The body is read by hand (JSON or multipart), so FastAPI cannot infer it: declared here.
_FORM_FIELDS: dict[str, dict[str, object]] = {
    "image": {"type": "string", "format": "binary"},
    "hires_fix": {"type": "boolean", "default": True},
    "use_realesrgan": {"type": "boolean", "default": True},
    "hr_scale": {"type": "number", "default": 2.0},
    "hr_resize_x": {"type": "integer", "minimum": 0, "default": 0},
    "hr_resize_y": {"type": "integer", "minimum": 0, "default": 0},
    "hr_upscaler": {"type": "string", "default": "auto"},
    "fallback": {"type": "boolean", "default": True},
    "prompt": {"type": "string"},
    "seed": {"type": "integer"},
}
_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    **GenerateRequest.model_json_schema(),
                    # At least one image: a prompt-only request is answered 422.
                    "anyOf": [
                        {"required": ["image"], "properties": {"image": {"type": "string", "minLength": 1}}},
                        {"required": ["images"], "properties": {"images": {"type": "array", "minItems": 1}}},
                    ],
                }
            },
            "multipart/form-data": {
                "schema": {"type": "object", "required": ["image"], "properties": _FORM_FIELDS}
            },
        },
    }
}


def round_to_grid(v: float) -> int:
    """Nearest multiple of 8 (the SD latent grid; halves round up), at least 8."""
    return max(LATENT_GRID, math.floor(v / LATENT_GRID + 0.5) * LATENT_GRID)


def hires_target(w: int, h: int, req: GenerateRequest) -> Target:
    """Second-pass size as A1111 computes it: hr_scale, or hr_resize_x/y (one keeps the aspect; both
    upscale to cover and centre-crop). Sizes are rounded to the latent grid."""
    rx, ry = req.hr_resize_x, req.hr_resize_y
    crop = None
    if rx == 0 and ry == 0:
        if not 1.0 <= req.hr_scale <= MAX_SCALE:
            raise InvalidParameter(f"hr_scale must be 1..{MAX_SCALE:g}, not {req.hr_scale:g}")
        tw, th = round_to_grid(w * req.hr_scale), round_to_grid(h * req.hr_scale)
    elif ry == 0:
        tw, th = round_to_grid(rx), round_to_grid(rx * h / w)
    elif rx == 0:
        tw, th = round_to_grid(ry * w / h), round_to_grid(ry)
    else:
        fw, fh = round_to_grid(rx), round_to_grid(ry)
        s = max(fw / w, fh / h)
        tw, th = max(fw, round(w * s)), max(fh, round(h * s))
        left, top = (tw - fw) // 2, (th - fh) // 2
        crop = (left, top, left + fw, top + fh)
    factor = max(tw / w, th / h)
    if factor > MAX_SCALE:
        raise InvalidParameter(f"second pass {tw}x{th} is more than {MAX_SCALE:g}x the {w}x{h} image")
    return Target(tw, th, factor, crop)


def decode_b64(text: str, index: int) -> bytes:
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImage(f"images[{index}] is not valid base64") from None


async def _read_request(request: Request, limit: int) -> tuple[GenerateRequest, list[bytes]]:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await read_body(request, limit)
    if ctype == "multipart/form-data":
        form = await parse_multipart(request.headers, body)
        try:
            files = [f for f in form.getlist("image") if isinstance(f, UploadFile)]
            fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
            req = validate_model(GenerateRequest, fields)
            images = [await f.read() for f in files]
        finally:
            await form.close()
    elif ctype in ("application/json", ""):
        try:
            payload = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValidationFailed(f"body is not valid JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise ValidationFailed("body must be a JSON object")
        req = validate_model(GenerateRequest, payload)
        images = []
    else:
        raise UnsupportedMediaType(
            f"Content-Type {ctype} is not accepted: send application/json or multipart"
        )
    texts = ([req.image] if req.image else []) + list(req.images or [])
    images += [decode_b64(t, i) for i, t in enumerate(texts)]
    if not images:
        raise ValidationFailed(
            "image: field required. /generate upscales a first-pass image ('image' or 'images'); "
            "prompt-only generation needs an upstream generator, which this service does not have"
        )
    return req, images


@router.post(
    "/generate",
    dependencies=[Depends(require_api_key)],
    response_model=GenerateResponse,
    openapi_extra=_OPENAPI,
    responses=error_responses(400, 401, 413, 415, 422, 503, 504),
)
async def generate(request: Request, state: StateDep) -> GenerateResponse:
    state.require_ready()
    t0 = time.perf_counter()
    settings = state.settings
    req, images = await _read_request(request, settings.max_upload_bytes)
    deadline = time.monotonic() + settings.request_timeout_s
    out: list[str] = []
    per_image: list[dict[str, Any]] = []
    async with cancel_on_disconnect(request) as cancel:
        for data in images:
            header = probe(data, settings.max_input_pixels)
            if not req.hires_fix:
                out.append(base64.b64encode(data).decode())
                size = [header.width, header.height]
                per_image.append(
                    {
                        "upscaler": None,
                        "backend": None,
                        "fallback_reason": None,
                        "input_size": size,
                        "output_size": size,
                    }
                )
                continue
            opts = Options(model=req.hr_upscaler, use_realesrgan=req.use_realesrgan, fallback=req.fallback)
            target = hires_target(header.width, header.height, req)
            result = await state.service.upscale(
                data, opts, target=target, fmt="png", deadline=deadline, cancel=cancel
            )
            out.append(base64.b64encode(result.data).decode())
            per_image.append(
                {
                    "upscaler": result.upscaler,
                    "backend": result.backend,
                    "fallback_reason": result.fallback_reason,
                    "input_size": list(result.input_size),
                    "output_size": list(result.output_size),
                }
            )
    note_result(request, **per_image[0])
    echoed: dict[str, Any] = dict(req.model_extra or {})
    info: dict[str, Any] = {
        **echoed,
        **per_image[0],
        "elapsed_ms": round((time.perf_counter() - t0) * 1000, 1),
        "hires_fix": req.hires_fix,
        "prompt": req.prompt,
        "seed": req.seed,
    }
    if len(per_image) > 1:
        info["images_info"] = per_image
    return GenerateResponse.model_validate({"images": out, "info": info})
