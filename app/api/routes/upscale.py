"""POST /upscale: multipart (`image` part + form fields) or the raw image body (+ query parameters)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from starlette.datastructures import UploadFile

from app.api.deps import (
    StateDep,
    cancel_on_disconnect,
    parse_multipart,
    read_body,
    require_api_key,
    validate_model,
)
from app.errors import InvalidImage, InvalidParameter, UnsupportedMediaType
from app.middleware import note_result
from app.schemas import UpscaleParams, error_responses
from app.service import Options, Result

router = APIRouter()

RAW_TYPES = {
    "image/png",
    "image/jpeg",
    "image/jpg",
    "image/webp",
    "image/bmp",
    "image/tiff",
    "image/gif",
    "application/octet-stream",
}

# What each option accepts as a client sends it (a form field, or a query parameter with a raw body).
# UpscaleParams checks the types (422); the service checks ranges and combinations (400).
OPTION_SCHEMAS: dict[str, dict[str, object]] = {
    "scale": {"type": "number", "exclusiveMinimum": 1, "maximum": 8},
    "width": {"type": "integer", "minimum": 1},
    "height": {"type": "integer", "minimum": 1},
    "model": {"type": "string", "default": "auto", "description": "a model name, `lanczos` or `auto`"},
    "use_realesrgan": {"type": "boolean", "default": True},
    "fallback": {"type": "boolean", "default": True},
    "format": {"type": "string", "enum": ["png", "jpeg", "jpg", "webp"]},
    "quality": {"type": "integer", "minimum": 1, "maximum": 100},
}

_RESULT_HEADERS = {
    "X-Upscaler": "the model name, or `lanczos`",
    "X-Upscale-Backend": "`pytorch`, `coreml` or `pillow`",
    "X-Input-Size": "`WxH`",
    "X-Output-Size": "`WxH`",
    "X-Processing-Ms": "milliseconds spent on the request",
    "X-Fallback-Reason": "only on a fallback to LANCZOS: why",
}

_OPENAPI = {
    "parameters": [
        {"name": k, "in": "query", "required": False, "schema": v} for k, v in OPTION_SCHEMAS.items()
    ],
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {"image": {"type": "string", "format": "binary"}, **OPTION_SCHEMAS},
                    "additionalProperties": False,  # an unknown field is refused (422)
                }
            },
            **{t: {"schema": {"type": "string", "format": "binary"}} for t in sorted(RAW_TYPES)},
        },
    },
    "responses": {
        "200": {
            "description": "the upscaled image",
            "content": {t: {} for t in ("image/png", "image/jpeg", "image/webp")},
            "headers": {
                name: {
                    "description": text,
                    "required": name != "X-Fallback-Reason",
                    "schema": {"type": "string"},
                }
                for name, text in _RESULT_HEADERS.items()
            },
        }
    },
}


def result_headers(result: Result) -> dict[str, str]:
    headers = {
        "X-Upscaler": result.upscaler,
        "X-Upscale-Backend": result.backend,
        "X-Input-Size": "{}x{}".format(*result.input_size),
        "X-Output-Size": "{}x{}".format(*result.output_size),
        "X-Processing-Ms": f"{result.elapsed_ms:.1f}",
    }
    if result.fallback_reason:
        headers["X-Fallback-Reason"] = result.fallback_reason
    return headers


def to_options(params: UpscaleParams) -> Options:
    """Range checks the schema leaves to the service (400 invalid_parameter, not 422)."""
    if params.quality is not None and not 1 <= params.quality <= 100:
        raise InvalidParameter(f"quality must be 1..100, not {params.quality}")
    return params


@router.post(
    "/upscale",
    dependencies=[Depends(require_api_key)],
    openapi_extra=_OPENAPI,
    responses=error_responses(400, 401, 413, 415, 422, 503, 504),
    response_class=Response,
)
async def upscale(request: Request, state: StateDep) -> Response:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "multipart/form-data" and ctype not in RAW_TYPES:
        raise UnsupportedMediaType(
            f"Content-Type {ctype or '(none)'} is not accepted: post multipart/form-data with an 'image' "
            "part (curl -F image=@in.png) or the raw image with Content-Type image/png, image/jpeg "
            "or image/webp"
        )
    state.require_ready()
    body = await read_body(request, state.settings.max_upload_bytes)
    fields: dict[str, str] = dict(request.query_params)
    if ctype == "multipart/form-data":
        form = await parse_multipart(request.headers, body)
        try:
            image = form.get("image")
            if not isinstance(image, UploadFile):
                raise InvalidImage("multipart body has no file part named 'image'")
            data = await image.read()
            fields.update({k: v for k, v in form.multi_items() if k != "image" and isinstance(v, str)})
        finally:
            await form.close()
    else:
        data = body
    options = to_options(validate_model(UpscaleParams, fields))
    async with cancel_on_disconnect(request) as cancel:
        result = await state.service.upscale(data, options, cancel=cancel)
    note_result(
        request,
        upscaler=result.upscaler,
        backend=result.backend,
        fallback_reason=result.fallback_reason,
        input_size=result.input_size,
        output_size=result.output_size,
    )
    return Response(result.data, media_type=result.media_type, headers=result_headers(result))
