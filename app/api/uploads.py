"""The one streaming reader of request bodies: UPSCALER_MAX_UPLOAD_MB is enforced while the body
arrives (from Content-Length before a byte is read, else by counting), and UPSCALER_READ_TIMEOUT_S
bounds how long it may take, for raw images and multipart alike, so no route buffers more than the
limit or waits on a stalled client.

Pure ASGI around the app: it wraps `receive`. A parser that meets a limit mid-body (FastAPI's form
parsing turns any failure into a 400) is answered here with the real status (413, 408 or 499).
"""

from __future__ import annotations

import asyncio
import time

from fastapi import Request, UploadFile
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import (
    ClientClosed,
    InvalidImage,
    PayloadTooLarge,
    RequestTimeout,
    UpscalerError,
    error_body,
    status_of,
)
from app.middleware import Outcome

BODY_METHODS = {"POST", "PUT", "PATCH"}


def media_type(request: Request) -> str:
    """The Content-Type without parameters, lower-cased ("" when absent)."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def upload_bytes(upload: UploadFile | None) -> bytes:
    """The bytes of the multipart part named `image`. Raises InvalidImage when there is none."""
    if upload is None:
        raise InvalidImage("multipart body has no file part named 'image'")
    try:
        return await upload.read()
    finally:
        await upload.close()


class UploadLimit:
    """Pure ASGI around the app, for requests with a body: at most `max_bytes` (413), all of it within
    `read_timeout_s` of the request's start (408, and the connection is closed), and a client that
    leaves mid-upload is a 499 (logged and counted, never a server error)."""

    def __init__(self, app: ASGIApp, max_bytes: int, read_timeout_s: float = 30.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout_s = read_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(
                scope,
                receive,
                send,
                PayloadTooLarge(f"body is {int(declared)} bytes; the limit is {self.max_bytes}"),
            )
            return
        deadline = time.monotonic() + self.read_timeout_s
        received = 0
        body_done = False
        failure: UpscalerError | None = None
        started = False

        async def counted() -> Message:
            nonlocal received, body_done, failure
            if body_done:  # past the body only http.disconnect comes: no deadline on that wait
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), timeout=max(0.0, deadline - time.monotonic()))
            except (TimeoutError, asyncio.TimeoutError):
                failure = RequestTimeout(
                    f"the request body did not arrive within {self.read_timeout_s:g}s "
                    "(UPSCALER_READ_TIMEOUT_S)"
                )
                raise failure from None
            if message["type"] == "http.disconnect":
                failure = ClientClosed("the client disconnected during the upload")
                raise failure
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > self.max_bytes:
                    failure = PayloadTooLarge(f"body is over the limit of {self.max_bytes} bytes")
                    raise failure
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            if failure is not None:  # the app's own answer to the failed read (a form parser's 400, ...)
                return
            started = True
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except UpscalerError as exc:
            if exc is not failure:
                raise
        if failure is not None and not started:
            await self._refuse(scope, receive, send, failure)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, exc: UpscalerError) -> None:
        scope.setdefault("state", {})["outcome"] = Outcome(error=exc.type)
        headers = {"Connection": "close"} if isinstance(exc, (RequestTimeout, PayloadTooLarge)) else None
        response = JSONResponse(
            error_body(exc.type, exc.message), status_code=status_of(exc), headers=headers
        )
        await response(scope, receive, send)
