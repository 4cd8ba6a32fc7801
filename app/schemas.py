"""Pydantic models of the public API: /upscale's options (query and form models), /generate, /health.

FastAPI builds the OpenAPI document from these. Types are checked here (422); ranges and combinations
in the sizing and the service (400 invalid_parameter), so a documented bound is a 400, not a 422.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import UploadFile
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

# How OpenAPI 3 spells a file part of a multipart body.
BINARY = {"type": "string", "format": "binary"}


class UpscaleOptions(BaseModel):
    """/upscale options: query parameters with a raw image body, or form fields beside the `image` part."""

    model_config = ConfigDict(extra="forbid")

    # A form field or query parameter is either sent or absent, never null: the schemas say so.
    scale: Annotated[
        float | None, WithJsonSchema({"type": "number", "exclusiveMinimum": 1, "maximum": 8})
    ] = Field(
        None, description="upscale factor, 1 < scale <= 8 (default: the chosen model's scale, 2 when none)"
    )
    width: Annotated[int | None, WithJsonSchema({"type": "integer", "minimum": 1})] = Field(
        None, description="output width (with height unset: keeps the aspect)"
    )
    height: Annotated[int | None, WithJsonSchema({"type": "integer", "minimum": 1})] = Field(
        None, description="output height (with width unset: keeps the aspect)"
    )
    model: str = Field("auto", description="a model name (see /health), `lanczos` or `auto`")
    use_realesrgan: bool = Field(True, description="false: LANCZOS")
    fallback: bool = Field(True, description="false: answer 503 with the reason instead of falling back")
    format: Annotated[
        str | None, WithJsonSchema({"type": "string", "enum": ["png", "jpeg", "jpg", "webp"]})
    ] = Field(None, description="output format (default: the input's when PNG, JPEG or WebP, else PNG)")
    quality: Annotated[int | None, WithJsonSchema({"type": "integer", "minimum": 1, "maximum": 100})] = Field(
        None, description="JPEG / WebP quality"
    )


class UpscaleForm(UpscaleOptions):
    """multipart/form-data: the image in part `image`, options as fields. File parts under other names
    are ignored; unknown text fields are refused (422), as the schema says."""

    model_config = ConfigDict(
        extra="allow", json_schema_extra={"required": ["image"], "additionalProperties": False}
    )

    image: Annotated[UploadFile | None, WithJsonSchema(BINARY)] = Field(
        None, description="the image (PNG, JPEG, WebP, BMP, TIFF or GIF)"
    )


class HiresFixOptions(BaseModel):
    """The hires-fix fields /generate takes (A1111 API field names), as JSON or as form fields."""

    hires_fix: bool = True
    use_realesrgan: bool = True
    hr_scale: float = 2.0
    hr_resize_x: int = Field(0, ge=0)
    hr_resize_y: int = Field(0, ge=0)
    hr_upscaler: str = "auto"
    fallback: bool = True
    prompt: Annotated[str | None, WithJsonSchema({"type": "string"})] = None
    seed: Annotated[int | None, WithJsonSchema({"type": "integer"})] = None


class GenerateRequest(HiresFixOptions):
    """The hires-fix hook's JSON body. Unknown fields are kept and echoed in info."""

    model_config = ConfigDict(extra="allow")

    image: str | None = None
    images: list[str] | None = None


class GenerateForm(HiresFixOptions):
    """/generate as multipart/form-data: image file part(s) named `image` and the same fields."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"required": ["image"]})

    image: Annotated[list[UploadFile], WithJsonSchema({"type": "array", "items": BINARY, "minItems": 1})] = (
        Field(default_factory=list, description="first-pass image(s)")
    )


class GenerateInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    upscaler: str | None
    backend: str | None
    fallback_reason: str | None
    input_size: list[int]
    output_size: list[int]
    elapsed_ms: float
    hires_fix: bool
    prompt: str | None = None
    seed: int | None = None


class GenerateResponse(BaseModel):
    images: list[str]
    info: GenerateInfo


class BackendHealth(BaseModel):
    available: bool
    version: str | None
    device: str | None = None
    precision: str | None = None
    reason: str | None


class ModelHealth(BaseModel):
    name: str
    backend: str
    file: str
    arch: str | None = Field(description="the model's family: RRDBNet, SRVGGNetCompact, SwinIR, ...")
    scale: int | None
    available: bool
    reason: str | None
    fallback_reason: str | None = None
    serving: bool = False
    tile: int | None = None
    precision: str | None = None
    source: str | None = Field(None, description="native, spandrel, ncnn or coreml")
    hyperparameters: dict[str, int | float | str | bool] = Field(default_factory=dict)
    duplicate_of: str | None = Field(None, description="the file that serves this name instead")
    meta: dict[str, str] = Field(default_factory=dict)


class QueueHealth(BaseModel):
    device: str
    in_flight: int
    waiting: int
    capacity: int


class Health(BaseModel):
    status: Literal["ok", "degraded", "starting"]
    ready: bool
    realesrgan_available: bool
    default_model: str | None
    fallback: str = "lanczos"
    backends: dict[str, BackendHealth]
    models: list[ModelHealth]
    queues: list[QueueHealth] = Field(default_factory=list)
    fallbacks: dict[str, int] = Field(default_factory=dict)


class Ready(BaseModel):
    ready: bool
    status: Literal["ok", "degraded", "starting", "draining"]


class ErrorDetail(BaseModel):
    type: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


_ERROR_HEADERS: dict[int, dict[str, Any]] = {
    503: {
        "Retry-After": {"description": "with `overloaded`: seconds to wait", "schema": {"type": "integer"}},
        "X-Fallback-Reason": {"description": "with `neural_unavailable`: why", "schema": {"type": "string"}},
    }
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for the given error status codes (with the headers they may carry)."""
    responses: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        responses[code] = {"model": ErrorBody}
        if code in _ERROR_HEADERS:
            responses[code]["headers"] = _ERROR_HEADERS[code]
    return responses
