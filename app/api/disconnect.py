"""The disconnect watch: a request whose client left is dropped before its work reaches the model (or
stops at the next tile)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator

from fastapi import Request

from app.errors import Cancelled, ClientClosed, ShuttingDown


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
