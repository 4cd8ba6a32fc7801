"""AUTOMATIC1111's API dialect: its request and response models (field names, defaults and bounds as in
A1111's `modules/api/models.py`) and their translation to and from the service's Jobs.

The adapter wraps the same service as /upscale (LitServe's "spec" idea): an A1111 request becomes one
Job per image and upscaler, so limits, the API key, metrics, the memory budget and the fallback policy
are the service's own. Upscaler names: A1111's `None`, `Lanczos` and `Nearest`, then every model name
of this service (and `auto`).
"""

from __future__ import annotations

import html
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool

from app.fallback import LANCZOS, NEAREST
from app.service import Result
from app.sizing import CoverTo, ScaleTo, Sizing


def _json_number(value: Any) -> Any:
    if isinstance(value, (bool, str, bytes)):
        raise ValueError("must be a JSON number")
    return value


JsonInt = Annotated[int, BeforeValidator(_json_number)]
JsonFloat = Annotated[float, BeforeValidator(_json_number)]

NONE = "None"
PIL_UPSCALERS = {"lanczos": LANCZOS, "nearest": NEAREST}
# A1111 lists its Pillow upscalers with scale 4 (what its UI proposes for them).
PIL_SCALE = 4.0
FACE_FIELDS = ("gfpgan_visibility", "codeformer_visibility")


class ExtrasOptions(BaseModel):
    """A1111's ExtrasBaseRequest. JSON types are taken as JSON says them: 0 is no boolean and "2" no
    number (2.0 is an integer, as in JSON Schema)."""

    model_config = ConfigDict(extra="ignore")

    resize_mode: JsonInt = Field(
        0,
        ge=0,
        le=1,
        description="0: upscale by upscaling_resize; 1: to upscaling_resize_w x upscaling_resize_h",
    )
    show_extras_results: StrictBool = True
    gfpgan_visibility: JsonFloat = Field(0, ge=0, le=1, description="not available here: reported as ignored")
    codeformer_visibility: JsonFloat = Field(
        0, ge=0, le=1, description="not available here: reported as ignored"
    )
    codeformer_weight: JsonFloat = Field(0, ge=0, le=1)
    upscaling_resize: JsonFloat = Field(2, ge=1, le=8, description="the factor with resize_mode 0")
    upscaling_resize_w: JsonInt = Field(512, ge=1, description="target width with resize_mode 1")
    upscaling_resize_h: JsonInt = Field(512, ge=1, description="target height with resize_mode 1")
    upscaling_crop: StrictBool = Field(
        True, description="resize_mode 1: crop to the exact size (else cover it)"
    )
    upscaler_1: str = Field(
        NONE, description="`None` (unchanged), `Lanczos`, `Nearest`, a model name or `auto`"
    )
    upscaler_2: str = Field(NONE, description="a second upscaler, blended in by extras_upscaler_2_visibility")
    extras_upscaler_2_visibility: JsonFloat = Field(0, ge=0, le=1)
    upscale_first: StrictBool = False


class ExtraSingleImageRequest(ExtrasOptions):
    image: str = Field("", description="the image as base64 (a data URL prefix is allowed)")


class FileData(BaseModel):
    data: str = Field(description="base64 image data (a data URL prefix is allowed)")
    name: str = ""


class ExtrasBatchImagesRequest(ExtrasOptions):
    imageList: list[FileData] = Field(description="the images to upscale")


class ExtraSingleImageResponse(BaseModel):
    html_info: str
    image: str


class ExtrasBatchImagesResponse(BaseModel):
    html_info: str
    images: list[str]


class UpscalerItem(BaseModel):
    name: str
    model_name: str | None = None
    model_path: str | None = None
    model_url: str | None = None
    scale: float | None = None


def sizing_of(opts: ExtrasOptions) -> Sizing | None:
    """The output size A1111 users mean; None when the image stays as it is (upscaling_resize 1).

    resize_mode 1 with neither upscaling_resize_w nor _h given but upscaling_resize set returns the
    image unchanged in A1111; here it means "scale by upscaling_resize", as those users intend."""
    if opts.resize_mode == 1:
        given = opts.model_fields_set
        if not ({"upscaling_resize_w", "upscaling_resize_h"} & given) and "upscaling_resize" in given:
            return ScaleTo(opts.upscaling_resize)
        return CoverTo(opts.upscaling_resize_w, opts.upscaling_resize_h, opts.upscaling_crop)
    return ScaleTo(opts.upscaling_resize) if opts.upscaling_resize > 1 else None


def service_model(name: str) -> str | None:
    """A1111 upscaler name -> the service's model name; None for A1111's `None` (no upscaling)."""
    key = name.strip()
    if not key or key.lower() == "none":
        return None
    return PIL_UPSCALERS.get(key.lower(), key)


def ignored_options(opts: ExtrasOptions) -> list[str]:
    """Options accepted for compatibility that this service does not implement (face restoration)."""
    return [f for f in FACE_FIELDS if getattr(opts, f) > 0]


def html_info(opts: ExtrasOptions, results: list[Result], blended: Result | None, ignored: list[str]) -> str:
    """A1111's one-paragraph summary, naming the upscaler that really ran and any fallback."""
    parts = []
    if results:
        first = results[0]
        w, h = first.output_size
        parts.append(f"Postprocess upscale to: {w}x{h}")
        parts.append(f"Postprocess upscaler: {first.upscaler} ({first.backend})")
        if first.fallback_reason:
            parts.append(f"Fallback: LANCZOS ({first.fallback_reason}) instead of {opts.upscaler_1}")
    else:
        parts.append("Postprocess upscaler: None (image unchanged)")
    if blended is not None:
        parts.append(f"Postprocess upscaler 2: {blended.upscaler} ({blended.backend})")
        parts.append(f"Postprocess upscaler 2 visibility: {opts.extras_upscaler_2_visibility:g}")
        if blended.fallback_reason:
            parts.append(f"Fallback 2: LANCZOS ({blended.fallback_reason}) instead of {opts.upscaler_2}")
    if ignored:
        parts.append(f"Ignored (not available in this service): {', '.join(ignored)}")
    return "<p>" + html.escape(", ".join(parts)) + "</p>"


SINGLE_EXAMPLES: dict[str, Any] = {
    "by factor": {
        "summary": "4x with a model",
        "value": {"image": "<base64 PNG>", "upscaler_1": "RealESRGAN_x4plus", "upscaling_resize": 4},
    },
    "to a size": {
        "summary": "resize_mode 1: cover 1024 x 768 and crop",
        "value": {
            "image": "<base64 PNG>",
            "resize_mode": 1,
            "upscaling_resize_w": 1024,
            "upscaling_resize_h": 768,
            "upscaling_crop": True,
            "upscaler_1": "auto",
        },
    },
    "blend": {
        "summary": "upscaler_2 mixed in at 30 %",
        "value": {
            "image": "<base64 PNG>",
            "upscaler_1": "auto",
            "upscaler_2": "Lanczos",
            "extras_upscaler_2_visibility": 0.3,
        },
    },
}
BATCH_EXAMPLES: dict[str, Any] = {
    "two images": {
        "summary": "2x, two images",
        "value": {
            "imageList": [
                {"data": "<base64 PNG>", "name": "a.png"},
                {"data": "<base64 PNG>", "name": "b.png"},
            ],
            "upscaler_1": "auto",
            "upscaling_resize": 2,
        },
    }
}
UPSCALERS_EXAMPLE = [
    {"name": "None", "model_name": None, "model_path": None, "model_url": None, "scale": 4.0},
    {"name": "Lanczos", "model_name": None, "model_path": None, "model_url": None, "scale": 4.0},
    {"name": "Nearest", "model_name": None, "model_path": None, "model_url": None, "scale": 4.0},
    {
        "name": "RealESRGAN_x4plus",
        "model_name": "RRDBNet",
        "model_path": "RealESRGAN_x4plus.pth",
        "model_url": None,
        "scale": 4.0,
    },
]
