"""AUTOMATIC1111-compatible routes (/sdapi/v1/...), so A1111 clients (webuiapi, SD front-ends) work
unchanged: the upscaler list, the extras tab's single and batch upscale, and a clear 501 for the
generation routes. The translation lives in app/api/a1111.py; the work is the service's."""

from __future__ import annotations

import asyncio
import io
import time
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Request, Response
from PIL import Image

from app.api import a1111, b64
from app.api.deps import StateDep, require_api_key
from app.api.disconnect import cancel_on_disconnect
from app.api.routes.upscale import outcome_of
from app.errors import NotImplementedHere
from app.imaging.decode import probe
from app.middleware import record_outcome, record_timings
from app.schemas import ErrorBody, error_responses
from app.service import Job, Result
from app.state import AppState

router = APIRouter(prefix="/sdapi/v1")


@router.get(
    "/upscalers",
    dependencies=[Depends(require_api_key)],
    response_model=list[a1111.UpscalerItem],
    responses={200: {"content": {"application/json": {"example": a1111.UPSCALERS_EXAMPLE}}}},
)
async def upscalers(state: StateDep) -> list[a1111.UpscalerItem]:
    """A1111's `None`, `Lanczos` and `Nearest`, then every model that can serve now."""
    items = [a1111.UpscalerItem(name=a1111.NONE, scale=a1111.PIL_SCALE)]
    items += [a1111.UpscalerItem(name=n, scale=a1111.PIL_SCALE) for n in ("Lanczos", "Nearest")]
    for entry in state.registry.available():
        family = entry.descriptor.family if entry.descriptor else None
        items.append(
            a1111.UpscalerItem(
                name=entry.name, model_name=family, model_path=entry.file.name, scale=entry.scale
            )
        )
    return items


def blend(first: bytes, second: bytes, visibility: float) -> bytes:
    """A1111's upscaler_2 mix: Image.blend(first, second, visibility), as PNG."""
    a, b = Image.open(io.BytesIO(first)), Image.open(io.BytesIO(second))
    mode = "RGBA" if "A" in a.mode or "A" in b.mode else "RGB"
    mixed = Image.blend(a.convert(mode), b.convert(mode), visibility)
    buf = io.BytesIO()
    mixed.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


async def run_extras(
    request: Request, state: AppState, opts: a1111.ExtrasOptions, images: list[bytes]
) -> tuple[list[bytes], str]:
    """Upscale each image as the extras tab would: PNGs and the html_info of the first."""
    state.require_ready()
    state.service.check_batch(len(images))
    sizing = a1111.sizing_of(opts)
    first_model, second_model = a1111.service_model(opts.upscaler_1), a1111.service_model(opts.upscaler_2)
    mix = opts.extras_upscaler_2_visibility if second_model is not None else 0.0
    deadline = time.monotonic() + state.settings.request_timeout_s
    out: list[bytes] = []
    firsts: list[Result] = []
    second: Result | None = None
    timings: list[tuple[str, float]] = []
    async with cancel_on_disconnect(request) as cancel:
        for data in images:
            if first_model is None or sizing is None:  # A1111's "None": the image as it came
                probe(data, state.settings.max_input_pixels)  # still an image, within the limits
                out.append(data)
                continue
            job = Job(data, sizing, model=first_model, format="png")
            result = await state.service.upscale(job, deadline=deadline, cancel=cancel)
            firsts.append(result)
            timings += result.timings
            encoded = result.data
            if mix > 0 and second_model is not None:
                other = Job(data, sizing, model=second_model, format="png")
                second = await state.service.upscale(other, deadline=deadline, cancel=cancel)
                timings += second.timings
                encoded = await asyncio.to_thread(blend, encoded, second.data, mix)
            out.append(encoded)
    if firsts:
        record_outcome(request, outcome_of(firsts[0]))
    record_timings(request, timings)
    return out, a1111.html_info(opts, firsts, second, a1111.ignored_options(opts))


@router.post(
    "/extra-single-image",
    dependencies=[Depends(require_api_key)],
    response_model=a1111.ExtraSingleImageResponse,
    responses=error_responses(400, 401, 413, 422, 503, 504),
)
async def extra_single_image(
    request: Request,
    state: StateDep,
    body: Annotated[a1111.ExtraSingleImageRequest, Body(openapi_examples=a1111.SINGLE_EXAMPLES)],
) -> Response:
    """A1111's extras tab for one image."""
    images, info = await run_extras(request, state, body, [b64.decode(body.image, 0)])
    return b64.json_response(
        a1111.ExtraSingleImageResponse(html_info=info, image=""), "image", images, single=True
    )


@router.post(
    "/extra-batch-images",
    dependencies=[Depends(require_api_key)],
    response_model=a1111.ExtrasBatchImagesResponse,
    responses=error_responses(400, 401, 413, 422, 503, 504),
)
async def extra_batch_images(
    request: Request,
    state: StateDep,
    body: Annotated[a1111.ExtrasBatchImagesRequest, Body(openapi_examples=a1111.BATCH_EXAMPLES)],
) -> Response:
    """A1111's extras tab for a batch (`imageList`)."""
    state.service.check_batch(len(body.imageList))
    data = [b64.decode(item.data, i) for i, item in enumerate(body.imageList)]
    images, info = await run_extras(request, state, body, data)
    return b64.json_response(a1111.ExtrasBatchImagesResponse(html_info=info, images=[]), "images", images)


NOT_IMPLEMENTED_RESPONSES = {
    **error_responses(401),
    501: {
        "model": ErrorBody,
        "description": "always: this service does not generate",
        "content": {
            "application/json": {
                "example": {"error": {"type": "not_implemented", "message": "... send it to POST /generate"}}
            }
        },
    },
}


@router.post("/txt2img", dependencies=[Depends(require_api_key)], responses=NOT_IMPLEMENTED_RESPONSES)
@router.post("/img2img", dependencies=[Depends(require_api_key)], responses=NOT_IMPLEMENTED_RESPONSES)
async def generation() -> None:
    """A1111's generation routes: this service has no generator (501)."""
    raise NotImplementedHere(
        "this service upscales but does not generate images: run txt2img / img2img in your SD "
        "pipeline and send its first-pass image to POST /generate (the hires-fix hook) or "
        "/sdapi/v1/extra-single-image"
    )
