"""POST /upscale: multipart (`image` part + form fields) or the raw image body (+ query parameters)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Query, Request, Response

from app.api.deps import StateDep, require_api_key
from app.api.disconnect import cancel_on_disconnect
from app.api.uploads import media_type, upload_bytes
from app.errors import InvalidImage, UnsupportedMediaType, ValidationFailed
from app.middleware import Outcome, record_outcome, record_timings
from app.schemas import UpscaleForm, UpscaleOptions, error_responses
from app.service import Job, Result
from app.sizing import ScaleTo

router = APIRouter()

RAW_TYPES = (
    "image/png",
    "image/jpeg",
    "image/jpg",
    "image/webp",
    "image/bmp",
    "image/tiff",
    "image/gif",
    "application/octet-stream",
)
RESULT_HEADERS = {
    "X-Upscaler": "the model name, or `lanczos`",
    "X-Upscale-Backend": "`pytorch`, `coreml` or `pillow`",
    "X-Input-Size": "`WxH`",
    "X-Output-Size": "`WxH`",
    "X-Processing-Ms": "milliseconds spent on the request",
    "Server-Timing": "where they went, in ms: `budget;dur=0.0, decode;dur=6.1, queue;dur=0.1, "
    "model;dur=46.3, encode;dur=2.0` (budget: waiting for memory; queue: waiting for the device; "
    "encode includes LANCZOS)",
    "X-Fallback-Reason": "only on a fallback to LANCZOS: why",
    "X-Metadata-Dropped": "only when metadata over UPSCALER_MAX_METADATA_KB was left out: text:<key>, icc",
}
# FastAPI describes a form model as url-encoded; this endpoint takes multipart (its schema is the
# generated UpscaleForm) or the raw image, and answers with image bytes and the result headers.
_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"$ref": "#/components/schemas/UpscaleForm"},
                "examples": {
                    "x4": {"summary": "4x with the default model", "value": {"scale": 4}},
                    "to width": {"summary": "2048 px wide, JPEG", "value": {"width": 2048, "format": "jpeg"}},
                },
            },
            **{t: {"schema": {"type": "string", "format": "binary"}} for t in RAW_TYPES},
        },
    },
    "responses": {
        "200": {
            "description": "the upscaled image",
            "content": {t: {} for t in ("image/png", "image/jpeg", "image/webp")},
            "headers": {
                name: {
                    "description": text,
                    "required": name not in ("X-Fallback-Reason", "X-Metadata-Dropped"),
                    "schema": {"type": "string"},
                }
                for name, text in RESULT_HEADERS.items()
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
    if result.metadata_dropped:
        names = ", ".join(result.metadata_dropped)
        more = f" (+{len(names) - 300} characters)" if len(names) > 300 else ""
        headers["X-Metadata-Dropped"] = names[:300].encode("latin-1", "replace").decode("latin-1") + more
    return headers


def outcome_of(result: Result) -> Outcome:
    return Outcome.of(
        upscaler=result.upscaler,
        backend=result.backend,
        fallback_reason=result.fallback_reason,
        input_size=result.input_size,
        output_size=result.output_size,
    )


def job_from(data: bytes, options: UpscaleOptions) -> Job:
    return Job(
        data,
        ScaleTo(options.scale, options.width, options.height),
        model=options.model,
        use_realesrgan=options.use_realesrgan,
        fallback=options.fallback,
        format=options.format,
        quality=options.quality,
    )


def check_media_type(request: Request) -> str:
    """The request's media type, when /upscale takes it. Raises UnsupportedMediaType."""
    ctype = media_type(request)
    if ctype != "multipart/form-data" and ctype not in RAW_TYPES:
        raise UnsupportedMediaType(
            f"Content-Type {ctype[:100] or '(none)'} is not accepted: post multipart/form-data with an "
            "'image' part (curl -F image=@in.png) or the raw image with Content-Type image/png, "
            "image/jpeg or image/webp"
        )
    return ctype


async def read_upload(
    request: Request, ctype: str, query: UpscaleOptions, form: UpscaleForm
) -> tuple[bytes, UpscaleOptions]:
    """The image bytes and the options (form fields over query parameters). Raises InvalidImage (no
    `image` part) and ValidationFailed (an unknown text field)."""
    if ctype == "multipart/form-data":
        if len((await request.form()).getlist("image")) > 1:  # parsed once already: starlette caches it
            raise InvalidImage("send one part named 'image' (POST /generate takes several images)")
        unknown = [k for k, v in (form.model_extra or {}).items() if isinstance(v, str)]
        if unknown:
            raise ValidationFailed(f"{unknown[0][:100]}: Extra inputs are not permitted")
        data = await upload_bytes(form.image)
        fields = {
            **query.model_dump(exclude_unset=True),
            **form.model_dump(exclude_unset=True, exclude={"image"}),
        }
        fields = {k: v for k, v in fields.items() if k in UpscaleOptions.model_fields}
        return data, UpscaleOptions.model_validate(fields)
    return await request.body(), query


@router.post(
    "/upscale",
    dependencies=[Depends(require_api_key)],
    openapi_extra=_OPENAPI,
    responses=error_responses(400, 401, 413, 415, 422, 503, 504),
    response_class=Response,
)
async def upscale(
    request: Request,
    state: StateDep,
    query: Annotated[UpscaleOptions, Query()],
    form: Annotated[UpscaleForm, Form()],
) -> Response:
    """Upscale one image: multipart (`curl -F image=@in.png -F scale=4`) or the raw image as the body
    with options as query parameters. The answer is the image; `X-Upscaler` says which model ran
    (`lanczos` on a fallback, with `X-Fallback-Reason`)."""
    ctype = check_media_type(request)
    state.require_ready()
    data, options = await read_upload(request, ctype, query, form)
    async with cancel_on_disconnect(request) as cancel:
        result = await state.service.upscale(job_from(data, options), cancel=cancel)
    record_outcome(request, outcome_of(result))
    record_timings(request, result.timings)
    return Response(result.data, media_type=result.media_type, headers=result_headers(result))
