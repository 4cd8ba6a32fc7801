"""POST /generate: the upscale step of a two-pass hires fix (A1111 API field names), as JSON or multipart."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request, Response
from pydantic import ValidationError

from app.api import b64
from app.api.deps import StateDep, require_api_key
from app.api.disconnect import cancel_on_disconnect
from app.api.uploads import media_type
from app.errors import UnsupportedMediaType, ValidationFailed
from app.imaging.decode import probe
from app.middleware import Outcome, record_outcome, record_timings
from app.schemas import GenerateForm, GenerateRequest, GenerateResponse, error_responses
from app.service import Job, Result
from app.sizing import HiresFix

router = APIRouter()

# A1111 options of the upscale step this service does not have: listed in info.ignored when set.
NOT_IMPLEMENTED = (
    "use_face_restoration",
    "restore_faces",
    "face_restoration_model",
    "gfpgan_visibility",
    "codeformer_visibility",
    "codeformer_weight",
)

# FastAPI describes a form model as url-encoded: this endpoint takes JSON (GenerateRequest) or
# multipart (GenerateForm), both generated from their models; at least one image is required.
_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "examples": {
                    "hires fix": {
                        "summary": "1.5x for the second pass",
                        "value": {
                            "image": "<base64 PNG>",
                            "hr_scale": 1.5,
                            "prompt": "a lighthouse",
                            "seed": 42,
                        },
                    },
                    "to a size": {
                        "summary": "cover 1216 x 832 and centre-crop",
                        "value": {"images": ["<base64 PNG>"], "hr_resize_x": 1216, "hr_resize_y": 832},
                    },
                },
                "schema": {
                    **GenerateRequest.model_json_schema(),
                    "anyOf": [
                        {"required": ["image"], "properties": {"image": {"type": "string", "minLength": 1}}},
                        {"required": ["images"], "properties": {"images": {"type": "array", "minItems": 1}}},
                    ],
                },
            },
            "multipart/form-data": {"schema": {"$ref": "#/components/schemas/GenerateForm"}},
        },
    }
}


def validation_failed(exc: ValidationError) -> ValidationFailed:
    err = exc.errors()[0]
    if err["type"] == "json_invalid":
        return ValidationFailed(f"body is not valid JSON: {str(err['ctx'].get('error', ''))[:200]}")
    where = ".".join(str(p) for p in err["loc"]) or "body"
    if err["type"] == "model_type" and not err["loc"]:
        return ValidationFailed("body must be a JSON object")
    return ValidationFailed(f"{where[:100]}: {err['msg']}")


async def read_request(request: Request, form: GenerateForm) -> tuple[GenerateRequest, list[bytes]]:
    """The request's fields and image bytes, from JSON (base64 images) or multipart (file parts).
    Raises UnsupportedMediaType, ValidationFailed (422) and InvalidImage."""
    ctype = media_type(request)
    images = []
    try:
        if ctype == "multipart/form-data":
            fields = form.model_dump(exclude={"image"}, exclude_unset=True) | dict(form.model_extra or {})
            for upload in form.image:
                images.append(await upload.read())
                await upload.close()
            req = GenerateRequest.model_validate(
                {k: v for k, v in fields.items() if isinstance(v, (str, int, float, bool))}
            )
        elif ctype in ("application/json", ""):
            # pydantic's own JSON parser (Rust, with a nesting limit): a base64 image string is one
            # copy there, where json.loads and then validation took 4-5x as long on the event loop.
            req = GenerateRequest.model_validate_json(await request.body())
        else:
            raise UnsupportedMediaType(
                f"Content-Type {ctype[:100]} is not accepted: send application/json or multipart"
            )
    except ValidationError as exc:
        raise validation_failed(exc) from None
    texts = ([req.image] if req.image else []) + list(req.images or [])
    images += [b64.decode(t, i) for i, t in enumerate(texts)]
    if not images:
        raise ValidationFailed(
            "image: field required. /generate upscales a first-pass image ('image' or 'images'); "
            "prompt-only generation needs an upstream generator, which this service does not have"
        )
    return req, images


def image_info(result: Result) -> dict[str, Any]:
    return {
        "upscaler": result.upscaler,
        "backend": result.backend,
        "fallback_reason": result.fallback_reason,
        "input_size": list(result.input_size),
        "output_size": list(result.output_size),
    }


@router.post(
    "/generate",
    dependencies=[Depends(require_api_key)],
    response_model=GenerateResponse,
    openapi_extra=_OPENAPI,
    responses=error_responses(400, 401, 413, 415, 422, 503, 504),
)
async def generate(request: Request, state: StateDep, form: Annotated[GenerateForm, Form()]) -> Response:
    """The upscale step of a two-pass hires fix: first-pass image(s) in (base64 JSON or multipart),
    images sized for the second pass out (PNG, sides on the latent grid of 8), with `info` saying what
    ran. Options it accepts but does not implement (face restoration) are listed under `info.ignored`,
    never echoed as if applied; other extra fields are echoed."""
    state.require_ready()
    t0 = time.perf_counter()
    settings = state.settings
    req, images = await read_request(request, form)
    state.service.check_batch(len(images))
    deadline = time.monotonic() + settings.request_timeout_s
    out: list[bytes] = []
    per_image: list[dict[str, Any]] = []
    timings: list[tuple[str, float]] = []
    async with cancel_on_disconnect(request) as cancel:
        for data in images:
            if not req.hires_fix:
                header = probe(data, settings.max_input_pixels)
                size = [header.width, header.height]
                out.append(data)
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
            job = Job(
                data,
                HiresFix(req.hr_scale, req.hr_resize_x, req.hr_resize_y),
                model=req.hr_upscaler,
                use_realesrgan=req.use_realesrgan,
                fallback=req.fallback,
                format="png",
            )
            result = await state.service.upscale(job, deadline=deadline, cancel=cancel)
            out.append(result.data)
            per_image.append(image_info(result))
            timings += result.timings
    record_outcome(request, Outcome.of(**per_image[0]))
    record_timings(request, timings)
    extra = dict(req.model_extra or {})
    ignored = sorted(k for k in NOT_IMPLEMENTED if extra.pop(k, None))
    info: dict[str, Any] = {
        **extra,
        **per_image[0],
        "elapsed_ms": round((time.perf_counter() - t0) * 1000, 1),
        "hires_fix": req.hires_fix,
        "prompt": req.prompt,
        "seed": req.seed,
    }
    if len(per_image) > 1:
        info["images_info"] = per_image
    if ignored:
        info["ignored"] = ignored
    return b64.json_response(GenerateResponse.model_validate({"images": [], "info": info}), "images", out)
