"""Pure ASGI middleware: request ids, one JSON access-log line and request metrics per request.

Routes (and the error handlers) tell the access log what a request did with one `Outcome`, recorded
once per request (`record_outcome`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.metrics import OTHER_ROUTE, Metrics

access_log = logging.getLogger("app.access")

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
# Response headers a browser page may read: the result's description and what a retry needs.
EXPOSED_HEADERS = [
    "X-Upscaler",
    "X-Upscale-Backend",
    "X-Fallback-Reason",
    "X-Metadata-Dropped",
    "X-Input-Size",
    "X-Output-Size",
    "X-Processing-Ms",
    "Server-Timing",
    REQUEST_ID_HEADER,
    "Retry-After",
]


def request_id(given: str | None) -> str:
    """The client's X-Request-ID when it is 1..128 of [A-Za-z0-9._-] (safe in logs and headers),
    else a fresh uuid4 hex."""
    if given is not None and _REQUEST_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Outcome:
    """What a request did, for its access-log line: the upscale's result, or the error type."""

    input_size: str | None = None
    output_size: str | None = None
    upscaler: str | None = None
    backend: str | None = None
    fallback_reason: str | None = None
    error: str | None = None

    @classmethod
    def of(
        cls,
        *,
        upscaler: str | None,
        backend: str | None,
        fallback_reason: str | None,
        input_size: Sequence[int],
        output_size: Sequence[int],
    ) -> Outcome:
        """An upscale's outcome, sizes as (width, height)."""
        w, h = input_size
        ow, oh = output_size
        return cls(f"{w}x{h}", f"{ow}x{oh}", upscaler, backend, fallback_reason)


def record_outcome(request: Request, outcome: Outcome) -> None:
    request.state.outcome = outcome


def record_timings(request: Request, timings: Iterable[tuple[str, float]]) -> None:
    """The answer's Server-Timing header: each stage's ms (summed over a request's images), in the
    order the stages first ran. Browsers' developer tools show it."""
    total: dict[str, float] = {}
    for stage, ms in timings:
        total[stage] = total.get(stage, 0.0) + ms
    if total:
        request.state.server_timing = ", ".join(f"{stage};dur={ms:.1f}" for stage, ms in total.items())


def route_label(scope: Scope) -> str:
    """The matched route's template ("/upscale"), never the raw path: metric labels stay bounded."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else OTHER_ROUTE


class ObservabilityMiddleware:
    """Gives every request an id (echoed as X-Request-ID on every response), counts it in the
    metrics by route template and status, and writes one JSON line on logger `app.access`."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        rid = request_id(Headers(scope=scope).get(REQUEST_ID_HEADER))
        fields: dict[str, Any] = scope.setdefault("state", {})
        fields["request_id"] = rid
        status: int | None = None

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers[REQUEST_ID_HEADER] = rid
                if "server_timing" in fields:
                    headers["Server-Timing"] = fields["server_timing"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except BaseException as exc:
            if status is None:  # the server answers 500 (or nothing, when the task was cancelled)
                status = 499 if isinstance(exc, asyncio.CancelledError) else 500
            raise
        finally:
            elapsed = time.perf_counter() - t0
            route = route_label(scope)
            final = status if status is not None else 500
            self.metrics.observe_request(route, scope["method"], final, elapsed)
            line = {
                "request_id": rid,
                "method": scope["method"],
                "path": scope["path"],
                "route": route,
                "status": final,
                **asdict(fields.get("outcome") or Outcome()),
                "ms": round(elapsed * 1000, 1),
            }
            access_log.info(json.dumps(line, separators=(",", ":")), extra={"access": line})
