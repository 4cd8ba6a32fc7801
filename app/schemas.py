"""Pydantic models of the public JSON: request options, /generate, /health."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class UpscaleParams(BaseModel):
    """/upscale options, from form fields or query parameters. Types are checked here (422);
    ranges and meaning in the service (400 invalid_parameter)."""

    model_config = ConfigDict(extra="forbid")

    scale: float | None = None
    width: int | None = None
    height: int | None = None
    model: str = "auto"
    use_realesrgan: bool = True
    fallback: bool = True
    format: str | None = None
    quality: int | None = None


class GenerateRequest(BaseModel):
    """The hires-fix hook's body (A1111 API field names). Unknown fields are kept and echoed in info."""

    model_config = ConfigDict(extra="allow")

    image: str | None = None
    images: list[str] | None = None
    hires_fix: bool = True
    use_realesrgan: bool = True
    hr_scale: float = 2.0
    hr_resize_x: int = Field(0, ge=0)
    hr_resize_y: int = Field(0, ge=0)
    hr_upscaler: str = "auto"
    fallback: bool = True
    prompt: str | None = None
    seed: int | None = None


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
