"""Shared request plumbing: the app state, API-key check, bounded body reading, option parsing."""

from __future__ import annotations

import hmac
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData, Headers
from starlette.formparsers import MultiPartException, MultiPartParser

from app.backends.registry import Registry
from app.config import Settings
from app.errors import InvalidParameter, NotReady, PayloadTooLarge, Unauthorized, ValidationFailed
from app.service import UpscaleService

M = TypeVar("M", bound=BaseModel)


@dataclass
class AppState:
    """What start-up built. `ready` turns true once every model was loaded (or refused)."""

    settings: Settings
    registry: Registry
    service: UpscaleService
    backends: dict[str, Any] = field(default_factory=dict)
    ready: bool = False

    def require_ready(self) -> None:
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
