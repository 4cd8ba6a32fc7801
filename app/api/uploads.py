"""The one streaming reader of request bodies: UPSCALER_MAX_UPLOAD_MB is enforced while the body
arrives (from Content-Length before a byte is read, else by counting), for raw images and multipart
alike, so no route buffers more than the limit.

Pure ASGI around the app: it wraps `receive`. A parser that meets the limit mid-body (FastAPI's form
parsing turns any failure into a 400) is answered here with 413 payload_too_large instead.
"""

from __future__ import annotations

from fastapi import Request, UploadFile
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import InvalidImage, PayloadTooLarge, error_body, status_of
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
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(
                scope, receive, send, f"body is {int(declared)} bytes; the limit is {self.max_bytes}"
            )
            return
        received = 0
        over = False
        started = False

        async def counted() -> Message:
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    over = True
                    raise PayloadTooLarge(f"body is over the limit of {self.max_bytes} bytes")
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            if over:  # the app's own answer to the failed read (400 from a form parser, or ours)
                return
            started = True
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except PayloadTooLarge:
            if not over:
                raise
        if over and not started:
            await self._refuse(scope, receive, send, f"body is over the limit of {self.max_bytes} bytes")

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, message: str) -> None:
        exc = PayloadTooLarge(message)
        scope.setdefault("state", {})["outcome"] = Outcome(error=exc.type)
        response = JSONResponse(error_body(exc.type, exc.message), status_code=status_of(exc))
        await response(scope, receive, send)
