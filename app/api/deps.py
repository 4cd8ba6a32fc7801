"""Shared request plumbing: the app state, API-key check, bounded body reading, option parsing, and
the disconnect watch that lets a request whose client left skip the model."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData, Headers
from starlette.formparsers import MultiPartException, MultiPartParser

from app.backends.registry import Registry
from app.config import Settings
from app.errors import (
    Cancelled,
    ClientClosed,
    InvalidParameter,
    NotReady,
    PayloadTooLarge,
    ShuttingDown,
    Unauthorized,
    ValidationFailed,
)
from app.service import UpscaleService

M = TypeVar("M", bound=BaseModel)


@dataclass
class AppState:
    """What start-up built. `ready` turns true once every model was loaded (or refused); `draining`
    once shutdown began (new work is refused, work in flight finishes)."""

    settings: Settings
    registry: Registry
    service: UpscaleService
    backends: dict[str, Any] = field(default_factory=dict)
    ready: bool = False
    draining: bool = False
    drain_started: float | None = None  # time.monotonic() when draining began

    def inference_device(self) -> str:
        """The device PyTorch models run on ("cpu" when torch is missing: LANCZOS-only service)."""
        device = getattr(self.backends.get("pytorch"), "device", None)
        return device if isinstance(device, str) else "cpu"

    def begin_drain(self) -> None:
        """Refuse new work from now on. Idempotent: the grace period counts from the first call."""
        if self.drain_started is None:
            self.drain_started = time.monotonic()
        self.draining = True

    def require_ready(self) -> None:
        """Raises ShuttingDown while draining, NotReady before start-up loading is done (both 503)."""
        if self.draining:
            raise ShuttingDown("the service is shutting down; retry on another instance")
        if not self.ready:
            raise NotReady("models are still loading; retry shortly")


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.upscaler
    return state


StateDep = Annotated[AppState, Depends(get_state)]


def require_api_key(request: Request, state: StateDep) -> None:
    """With UPSCALER_API_KEY set: `Authorization: Bearer <key>` or `X-API-Key: <key>`, compared in
    constant time. Raises Unauthorized."""
    if state.settings.api_key is None:
        return
    expected = state.settings.api_key.get_secret_value().encode()
    auth = request.headers.get("authorization", "")
    given = auth[7:].strip() if auth.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
    if not hmac.compare_digest(given.encode(), expected):
        raise Unauthorized("missing or wrong API key (Authorization: Bearer <key> or X-API-Key)")


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing more than `limit` bytes (from Content-Length when sent, else while
    streaming). Raises PayloadTooLarge."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body is {int(declared)} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@contextlib.asynccontextmanager
async def cancel_on_disconnect(request: Request) -> AsyncIterator[threading.Event]:
    """A cancel flag for the work of a request whose body was read: set as soon as the client
    disconnects, so its queued job is dropped before it reaches the model (or stops at the next tile).

    Raises ClientClosed (499, seen only in the logs) when the client is already gone or left while
    the work was cancelled; ShuttingDown when shutdown stopped the work instead.
    """
    if await request.is_disconnected():
        raise ClientClosed("the client disconnected before its work started")
    cancel = threading.Event()
    gone = asyncio.Event()

    async def watch() -> None:
        # Past the body the server only ever sends http.disconnect; anything else is waited out.
        while (await request.receive())["type"] != "http.disconnect":
            await asyncio.sleep(0.1)
        gone.set()
        cancel.set()

    watcher = asyncio.create_task(watch())
    try:
        yield cancel
    except Cancelled:
        if gone.is_set():
            raise ClientClosed("the client disconnected; its work was dropped") from None
        raise ShuttingDown("the service stopped before this request's work was done") from None
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


async def parse_multipart(headers: Headers, body: bytes, max_fields: int = 100) -> FormData:
    async def stream() -> AsyncGenerator[bytes, None]:
        yield body

    try:
        return await MultiPartParser(
            headers, stream(), max_files=16, max_fields=max_fields, max_part_size=4 * 1024 * 1024
        ).parse()
    except MultiPartException as exc:
        raise InvalidParameter(f"malformed multipart body: {exc.message}") from None


def validate_model(model: type[M], values: Mapping[str, Any]) -> M:
    """Build `model` from strings; raises ValidationFailed (422) naming the first bad field."""
    try:
        return model.model_validate(dict(values))
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "body"
        raise ValidationFailed(f"{where}: {err['msg']}") from None
