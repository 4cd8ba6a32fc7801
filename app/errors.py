"""Domain exceptions and the one table that maps them to HTTP status codes and JSON bodies."""

from __future__ import annotations


class UpscalerError(Exception):
    """Base of every error a client can cause or be told about. `type` is the JSON error type."""

    type = "error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class InvalidImage(UpscalerError):
    type = "invalid_image"


class InvalidParameter(UpscalerError):
    type = "invalid_parameter"


class Unauthorized(UpscalerError):
    type = "unauthorized"


class PayloadTooLarge(UpscalerError):
    type = "payload_too_large"


class ImageTooLarge(UpscalerError):
    type = "image_too_large"


class UnsupportedMediaType(UpscalerError):
    type = "unsupported_media_type"


class ValidationFailed(UpscalerError):
    type = "validation_error"


class RetryLater(UpscalerError):
    """A 503 the client should retry after `Retry-After` seconds."""

    retry_after_s = 1

    def __init__(self, message: str, retry_after_s: int | None = None) -> None:
        seconds = self.retry_after_s if retry_after_s is None else retry_after_s
        super().__init__(message, headers={"Retry-After": str(seconds)})


class Overloaded(RetryLater):
    type = "overloaded"


class NeuralUnavailable(UpscalerError):
    """The request said fallback=false and no neural model could serve it."""

    type = "neural_unavailable"

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message, headers={"X-Fallback-Reason": reason})
        self.reason = reason


class NotReady(RetryLater):
    """Start-up loading is not done yet."""

    type = "not_ready"
    retry_after_s = 5


class ShuttingDown(RetryLater):
    """The process is draining after SIGTERM: in-flight work finishes, new work goes elsewhere."""

    type = "shutting_down"
    retry_after_s = 5


class ClientClosed(UpscalerError):
    """The client disconnected before its result was ready; the answer is only seen in the logs."""

    type = "client_closed_request"


class Timeout(UpscalerError):
    type = "timeout"


class RequestTimeout(UpscalerError):
    """The request body did not arrive within UPSCALER_READ_TIMEOUT_S."""

    type = "request_timeout"


class NotImplementedHere(UpscalerError):
    """An endpoint of another API that this service does not provide (A1111's generation routes)."""

    type = "not_implemented"


class Cancelled(Exception):
    """Work stopped because its request timed out or its client left; never reaches a client."""


class OutOfMemory(Exception):
    """Inference ran out of memory even at the smallest tile; the caller falls back to LANCZOS."""


class ModelFailed(Exception):
    """A model raised while running; the caller falls back to LANCZOS with `model_error`."""


STATUS_BY_ERROR: dict[type[UpscalerError], int] = {
    InvalidImage: 400,
    InvalidParameter: 400,
    Unauthorized: 401,
    PayloadTooLarge: 413,
    ImageTooLarge: 413,
    UnsupportedMediaType: 415,
    ValidationFailed: 422,
    Overloaded: 503,
    NeuralUnavailable: 503,
    NotReady: 503,
    ShuttingDown: 503,
    RequestTimeout: 408,
    ClientClosed: 499,  # nginx's code for "client closed request": nobody reads it, the access log does
    NotImplementedHere: 501,
    Timeout: 504,
}


def status_of(exc: UpscalerError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return 500


def error_body(type_: str, message: str) -> dict[str, dict[str, str]]:
    return {"error": {"type": type_, "message": message}}
