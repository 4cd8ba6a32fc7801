"""Sync and async clients for the Upscaler service: /health, /upscale and /generate, typed results,
retries on 503 that honour Retry-After, and the API key.

Requests are built and responses read by the same functions for both clients; only the sending
differs. Nothing here imports the server, torch or Pillow.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pybase64

DEFAULT_URL = "http://127.0.0.1:8000"
RETRY_STATUSES = {503}
DEFAULT_RETRY_AFTER_S = 1.0

ImageInput = bytes | str | Path


class UpscalerError(Exception):
    """The service answered with an error: `status`, its `type` (e.g. "invalid_image") and `message`."""

    def __init__(self, status: int, type_: str, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(f"{status} {type_}: {message}")
        self.status = status
        self.type = type_
        self.message = message
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class UpscaleResult:
    """An upscaled image and what the service says it did."""

    image: bytes
    media_type: str
    upscaler: str
    backend: str
    fallback_reason: str | None
    input_size: tuple[int, int]
    output_size: tuple[int, int]
    elapsed_ms: float
    # Where the service's time went, in ms, from its Server-Timing header: budget, decode, queue,
    # model, encode (empty from a service that does not send it).
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def fell_back(self) -> bool:
        return self.fallback_reason is not None


@dataclass(frozen=True)
class GenerateResult:
    """/generate's second-pass images (PNG bytes) and its info."""

    images: list[bytes]
    upscaler: str | None
    backend: str | None
    fallback_reason: str | None
    input_size: tuple[int, int]
    output_size: tuple[int, int]
    info: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)  # summed over the images (Server-Timing)


@dataclass(frozen=True)
class Health:
    status: str
    ready: bool
    default_model: str | None
    models: list[dict[str, Any]]
    raw: dict[str, Any]

    @property
    def serving(self) -> list[str]:
        """Names of the models that can serve now."""
        return [m["name"] for m in self.models if m.get("available")]


def _read(image: ImageInput) -> bytes:
    return image if isinstance(image, bytes) else Path(image).read_bytes()


def _size(text: str) -> tuple[int, int]:
    w, _, h = text.partition("x")
    return int(w), int(h)


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _raise_for(resp: httpx.Response) -> None:
    if resp.status_code < 400:
        return
    try:
        err = resp.json()["error"]
        type_, message = str(err.get("type", "error")), str(err.get("message", ""))
    except (ValueError, KeyError, TypeError):
        type_, message = "error", resp.text[:300]
    raise UpscalerError(resp.status_code, type_, message, _retry_after(resp))


def _upscale_request(
    image: ImageInput, options: Mapping[str, Any]
) -> tuple[dict[str, tuple[str, bytes, str]], dict[str, str]]:
    fields = {
        k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in options.items() if v is not None
    }
    return {"image": ("image", _read(image), "application/octet-stream")}, fields


def _timings(resp: httpx.Response) -> dict[str, float]:
    """Server-Timing's `stage;dur=ms` entries; anything else in the header is skipped."""
    out: dict[str, float] = {}
    for entry in resp.headers.get("server-timing", "").split(","):
        name, _, rest = entry.strip().partition(";")
        for param in rest.split(";"):
            key, _, value = param.strip().partition("=")
            if name and key == "dur":
                with contextlib.suppress(ValueError):
                    out[name] = float(value)
    return out


def _upscale_result(resp: httpx.Response) -> UpscaleResult:
    _raise_for(resp)
    h = resp.headers
    return UpscaleResult(
        image=resp.content,
        media_type=h.get("content-type", ""),
        upscaler=h["x-upscaler"],
        backend=h["x-upscale-backend"],
        fallback_reason=h.get("x-fallback-reason"),
        input_size=_size(h["x-input-size"]),
        output_size=_size(h["x-output-size"]),
        elapsed_ms=float(h.get("x-processing-ms", "nan")),
        timings=_timings(resp),
    )


def _generate_body(images: ImageInput | Iterable[ImageInput], options: Mapping[str, Any]) -> dict[str, Any]:
    items = [images] if isinstance(images, (bytes, str, Path)) else list(images)
    return {"images": [pybase64.b64encode(_read(i)).decode() for i in items], **options}


def _generate_result(resp: httpx.Response) -> GenerateResult:
    _raise_for(resp)
    body = resp.json()
    info = body.get("info", {})
    return GenerateResult(
        images=[pybase64.b64decode(i, validate=True) for i in body["images"]],
        upscaler=info.get("upscaler"),
        backend=info.get("backend"),
        fallback_reason=info.get("fallback_reason"),
        input_size=tuple(info.get("input_size", (0, 0))),
        output_size=tuple(info.get("output_size", (0, 0))),
        info=info,
        timings=_timings(resp),
    )


def _health(resp: httpx.Response) -> Health:
    _raise_for(resp)
    body = resp.json()
    return Health(
        body["status"], bool(body["ready"]), body.get("default_model"), body.get("models", []), body
    )


class _Base:
    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout_s: float = 600.0,
        retries: int = 3,
        max_retry_wait_s: float = 60.0,
    ) -> None:
        """`retries`: how often a 503 (overloaded, not ready, shutting down) is retried, each after the
        server's Retry-After (at most `max_retry_wait_s`)."""
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout_s = timeout_s
        self.retries = retries
        self.max_retry_wait_s = max_retry_wait_s

    def _wait(self, resp: httpx.Response, attempt: int) -> float | None:
        """Seconds to wait before another try, or None to give up."""
        if resp.status_code not in RETRY_STATUSES or attempt >= self.retries:
            return None
        return min(self.max_retry_wait_s, _retry_after(resp) or DEFAULT_RETRY_AFTER_S)


class Client(_Base):
    """Blocking client; thread-safe (one connection pool), usable as a context manager."""

    def __init__(
        self, url: str = DEFAULT_URL, *, transport: httpx.BaseTransport | None = None, **kwargs: Any
    ) -> None:
        super().__init__(url, **kwargs)
        self._http = httpx.Client(
            base_url=self.url, headers=self.headers, timeout=self.timeout_s, transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        attempt = 0
        while True:
            resp = self._http.request(method, path, **kwargs)
            wait = self._wait(resp, attempt)
            if wait is None:
                return resp
            time.sleep(wait)
            attempt += 1

    def health(self) -> Health:
        return _health(self._send("GET", "/health"))

    def upscale(self, image: ImageInput, **options: Any) -> UpscaleResult:
        """Options as /upscale takes them: scale, width, height, model, format, quality, fallback,
        use_realesrgan. Raises UpscalerError."""
        files, data = _upscale_request(image, options)
        return _upscale_result(self._send("POST", "/upscale", files=files, data=data))

    def generate(self, images: ImageInput | Iterable[ImageInput], **options: Any) -> GenerateResult:
        """The hires-fix hook: hr_scale, hr_resize_x / hr_resize_y, hr_upscaler, ... Raises UpscalerError,
        and ValueError (binascii.Error) when an answer's image is not valid base64."""
        return _generate_result(self._send("POST", "/generate", json=_generate_body(images, options)))


class AsyncClient(_Base):
    """asyncio client with the same calls as Client."""

    def __init__(
        self, url: str = DEFAULT_URL, *, transport: httpx.AsyncBaseTransport | None = None, **kwargs: Any
    ) -> None:
        super().__init__(url, **kwargs)
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=self.headers, timeout=self.timeout_s, transport=transport
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        attempt = 0
        while True:
            resp = await self._http.request(method, path, **kwargs)
            wait = self._wait(resp, attempt)
            if wait is None:
                return resp
            await asyncio.sleep(wait)
            attempt += 1

    async def health(self) -> Health:
        return _health(await self._send("GET", "/health"))

    async def upscale(self, image: ImageInput, **options: Any) -> UpscaleResult:
        files, data = _upscale_request(image, options)
        return _upscale_result(await self._send("POST", "/upscale", files=files, data=data))

    async def generate(self, images: ImageInput | Iterable[ImageInput], **options: Any) -> GenerateResult:
        return _generate_result(await self._send("POST", "/generate", json=_generate_body(images, options)))
