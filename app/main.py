"""create_app(settings, backends=None) builds the ASGI app from its settings, in one place (backends,
registry, service, metrics, CORS); its lifespan loads the models once, and at shutdown drains: new work
is refused while the work in flight gets UPSCALER_SHUTDOWN_GRACE_S to finish.

`app.main:app` (for `uvicorn app.main:app`) is built when it is first asked for, not at import: the
environment is read then, and importing this module loads nothing.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartParser

from app.allocator import reuse_image_buffers
from app.api.routes import docs, generate, health, sdapi, upscale
from app.api.routes import metrics as metrics_route
from app.api.uploads import UploadLimit
from app.backends.base import Backend
from app.backends.coreml import CoreMLBackend
from app.backends.pytorch import PyTorchBackend
from app.backends.registry import Registry
from app.config import Settings, load_settings
from app.errors import UpscalerError, error_body, status_of
from app.imaging.decode import load_plugins
from app.memory import MIB
from app.metrics import Metrics
from app.middleware import (
    EXPOSED_HEADERS,
    REQUEST_ID_HEADER,
    ObservabilityMiddleware,
    Outcome,
    record_outcome,
)
from app.scheduler import DeviceQueue, switch_interval, wait_idle
from app.service import UpscaleService
from app.state import AppState

log = logging.getLogger("app")


def build_state(
    settings: Settings, metrics: Metrics | None = None, backends: dict[str, Backend] | None = None
) -> AppState:
    """Backends and an empty registry; cheap (torch is imported here when present, nothing loads).
    `backends` replaces the PyTorch and Core ML backends (tests, embedders)."""
    if backends is None:
        backends = {
            "pytorch": PyTorchBackend(
                settings.device,
                settings.precision,
                settings.tile,
                settings.threads,
                settings.compile,
                settings.cuda_graphs,
            ),
            "coreml": CoreMLBackend(settings.coreml_compute_units, settings.tile_pad),
        }
    registry = Registry(backends.values())
    queues: dict[str, DeviceQueue] = {}
    service = UpscaleService(
        settings, registry, queues, on_inference=metrics.observe_inference if metrics else None
    )
    return AppState(settings=settings, registry=registry, service=service, backends=backends)


def load_models(state: AppState) -> None:
    """Scan and load every model (blocking); marks the state ready even when nothing loaded."""
    try:
        state.registry.scan(state.settings.weights_dir)
    finally:
        state.ready = True
    names = [m.name for m in state.registry.available()]
    if names:
        log.info("ready: neural models %s; default %s", ", ".join(names), state.service.default_model())
    else:
        log.warning("ready in LANCZOS mode: no neural model can serve (see /health for the reasons)")
    log.info("memory budget, shared by the requests in flight: %.0f MiB", state.service.budget.total / MIB)


async def drain(state: AppState) -> None:
    """Refuse new work, then wait for the device queues to empty, up to the grace period counted from
    when draining began; what is still running then is told to stop at its next tile."""
    state.begin_drain()
    queues = list(state.service.queues.values())
    busy = sum(q.in_flight for q in queues)
    if busy:
        started = state.drain_started if state.drain_started is not None else time.monotonic()
        left = state.settings.shutdown_grace_s - (time.monotonic() - started)
        log.info("draining: waiting up to %.1fs for %d request(s) in flight", max(0.0, left), busy)
        if not await wait_idle(queues, left):
            log.warning(
                "shutdown grace period (%.1fs) is over: stopping %d request(s) still in flight",
                state.settings.shutdown_grace_s,
                sum(q.in_flight for q in queues),
            )
    for queue in queues:
        queue.shutdown()


def create_app(
    settings: Settings | None = None,
    backends: dict[str, Backend] | None = None,
    *,
    background_load: bool = True,
) -> FastAPI:
    """The app, built from `settings` (None: read from the environment now). With `background_load`,
    start-up returns at once and /health says "starting" until the models are loaded (probes answer
    meanwhile)."""
    settings = settings or load_settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        with switch_interval(settings.switch_interval_ms):
            # A fresh state per run of the lifespan: a drained one has stopped its device threads.
            state = build_state(settings, metrics, backends)
            reuse_image_buffers(one_heap=state.inference_device() == "cpu")  # before the threads start
            app.state.upscaler = state
            metrics.watch(state)
            # Imports the first request would otherwise wait for: anyio's asyncio backend, loaded on first
            # use (request.is_disconnected's cancel scope), and Pillow's format plugins, on the first
            # Image.open. A first LANCZOS request on a 2-core machine took 27-40 ms, then 17-18 ms; 4-6 ms
            # later on. (Most of what is left is FastAPI building each route's state on its first match.)
            await anyio.sleep(0)
            load_plugins()
            # Models load and warm up on the thread that will run them: OpenMP keeps a thread team per
            # calling thread, and a second team's idle spinning slowed inference by a quarter on 2 cores.
            executor = state.service.queue_for(state.inference_device()).executor
            if background_load:
                task = asyncio.ensure_future(
                    asyncio.get_running_loop().run_in_executor(executor, load_models, state)
                )
            else:
                executor.submit(load_models, state).result()
            try:
                yield
            finally:
                state.begin_drain()
                if background_load and not task.done():
                    await asyncio.shield(task)
                await drain(state)

    app = FastAPI(
        title="Upscaler",
        version="0.1.0",
        summary="Super-resolution (ESRGAN / Real-ESRGAN families, spandrel's zoo, ncnn files, Core ML) "
        "with an honest LANCZOS fallback",
        description=API_DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    docs.install(app)
    app.state.metrics = metrics
    app.include_router(health.router, tags=["health"])
    app.include_router(upscale.router, tags=["upscale"])
    app.include_router(generate.router, tags=["generate"])
    app.include_router(sdapi.router, tags=["AUTOMATIC1111"])
    app.include_router(metrics_route.router, tags=["metrics"])
    install_error_handlers(app)
    app.openapi = lambda: openapi_schema(app)  # type: ignore[method-assign]
    if settings.cors_origin_list:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", REQUEST_ID_HEADER],
            expose_headers=EXPOSED_HEADERS,
            max_age=600,
        )
    app.add_middleware(
        UploadLimit, max_bytes=settings.max_upload_bytes, read_timeout_s=settings.read_timeout_s
    )
    # A multipart file part stays in memory up to the upload limit, as a raw body does (UploadLimit
    # bounds both; the route reads the part whole into bytes anyway). Starlette's default spools a part
    # past 1 MB to a temporary file, and then every chunk's write and the final read hop to a worker
    # thread: a 1024² PNG is about that size. The event loop's CPU per such request fell by 0.7-1.0 ms
    # (of 5.0-5.7, three rounds of 30 requests on this project's 2-core machine).
    MultiPartParser.spool_max_size = max(MultiPartParser.spool_max_size, settings.max_upload_bytes)
    app.add_middleware(ObservabilityMiddleware, metrics=metrics)  # outermost: sees every answer
    return app


API_DESCRIPTION = """\
Upscales images for people and pipelines: `POST /upscale` (multipart or a raw image), the hires-fix
hook `POST /generate`, and AUTOMATIC1111's `/sdapi/v1` upscale routes. `GET /health` says which models
can serve; every response says which upscaler ran (`X-Upscaler`) and, when it fell back to LANCZOS,
why (`X-Fallback-Reason`). Errors are `{"error": {"type", "message"}}`.

Every request may carry `X-Request-ID` (1-128 of `[A-Za-z0-9._-]`); every response echoes it (or a
fresh id) and the access log records it. With `UPSCALER_API_KEY` set, the upload routes need the key
(Authorize: Bearer, `X-API-Key`, or Basic with the key as password); `/health*` stays open.
"""
OPENAPI_TAGS = [
    {"name": "upscale", "description": "one image in, the upscaled image out, with what ran in the headers"},
    {"name": "generate", "description": "the upscale step of a two-pass hires fix (A1111 field names)"},
    {"name": "AUTOMATIC1111", "description": "A1111's API dialect, for clients such as webuiapi"},
    {"name": "health", "description": "what can serve (always open, also with an API key)"},
    {"name": "metrics", "description": "Prometheus text exposition"},
]
BODY_PARSE_ERROR = "There was an error parsing the body"
REQUEST_ID_PARAMETER = {
    "name": REQUEST_ID_HEADER,
    "in": "header",
    "required": False,
    "description": "your id for this request, echoed in the response and the access log when it is 1-128 "
    "of [A-Za-z0-9._-] (any other value is replaced by a fresh id, not refused)",
    "schema": {"type": "string"},
}
REQUEST_ID_RESPONSE_HEADER = {
    "description": "the request's id: the client's X-Request-ID when valid, else a fresh one",
    "schema": {"type": "string"},
}


def openapi_schema(app: FastAPI) -> dict[str, Any]:
    """FastAPI's generated document, with what it cannot know: the upload endpoints take multipart
    (and raw images, or JSON) rather than the url-encoded body FastAPI lists for a form model; every
    operation takes and answers X-Request-ID (the middleware's, not a route's); and the API key is
    optional (an empty security requirement) because it is enforced only when configured."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title,
            version=app.version,
            summary=app.summary,
            description=app.description,
            routes=app.routes,
            tags=OPENAPI_TAGS,
        )
        for item in schema.get("paths", {}).values():
            for operation in item.values():
                content = operation.get("requestBody", {}).get("content", {})
                if "multipart/form-data" in content:
                    content.pop("application/x-www-form-urlencoded", None)
                operation.setdefault("parameters", []).append(REQUEST_ID_PARAMETER)
                if operation.get("security"):  # the key is needed only when UPSCALER_API_KEY is set
                    operation["security"].append({})
                for response in operation.get("responses", {}).values():
                    response.setdefault("headers", {})[REQUEST_ID_HEADER] = REQUEST_ID_RESPONSE_HEADER
        app.openapi_schema = schema
    return app.openapi_schema


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves as {"error": {"type", "message"}}; statuses come from errors.STATUS_BY_ERROR."""

    @app.exception_handler(UpscalerError)
    async def on_upscaler_error(request: Request, exc: UpscalerError) -> JSONResponse:
        record_outcome(request, Outcome(error=exc.type))
        return JSONResponse(
            error_body(exc.type, exc.message), status_code=status_of(exc), headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()))[:200] or "request"
        record_outcome(request, Outcome(error="validation_error"))
        return JSONResponse(error_body("validation_error", f"{where}: {first.get('msg')}"), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kinds = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed"}
        kind = kinds.get(exc.status_code, "http_error")
        detail, status = str(exc.detail), exc.status_code
        if status == 400 and detail == BODY_PARSE_ERROR:  # FastAPI's answer to any unparsable JSON
            kind, status = "validation_error", 422
            detail = "body: not valid JSON (malformed, or nested too deeply)"
        record_outcome(request, Outcome(error=kind))
        return JSONResponse(
            error_body(kind, detail),
            status_code=status,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        # This answer leaves outside the middlewares (from Starlette's outermost error handler).
        rid = getattr(request.state, "request_id", None)
        return JSONResponse(
            error_body("internal_error", "the server failed; the error was logged"),
            status_code=500,
            headers={REQUEST_ID_HEADER: rid} if rid else None,
        )


def __getattr__(name: str) -> FastAPI:
    """`app.main:app`, built from the environment on first use (PEP 562), cached for later lookups."""
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    built = create_app()
    globals()["app"] = built
    stop_uvicorn_cleanly_on_sigterm()
    return built


def stop_uvicorn_cleanly_on_sigterm() -> None:
    """Under `uvicorn app.main:app`, SIGTERM drains exactly as under `python -m app` and exits 0.

    uvicorn records the signal it handled and, once its graceful shutdown (and our lifespan's drain)
    is done, restores the handler it found and raises the signal again: with the default handler the
    process ends by the signal (exit 143) and a supervisor counts a clean stop as a crash. uvicorn
    loads the app before it installs its handlers, so the handler it will find and restore is this
    one, which ends the process with 0 as python -m app's does. (Should a uvicorn load the app with
    its own handler already installed, that handler is asked to stop the server without recording.)
    """
    if threading.current_thread() is not threading.main_thread():
        return
    handler = signal.getsignal(signal.SIGTERM)
    server = getattr(handler, "__self__", None)
    if handler == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _exit_cleanly)
    elif (
        server is not None
        and type(server).__module__.startswith("uvicorn")
        and hasattr(server, "should_exit")
    ):

        def stop(sig: int, frame: object) -> None:
            server.should_exit = True

        signal.signal(signal.SIGTERM, stop)


def _exit_cleanly(sig: int, frame: object) -> None:
    raise SystemExit(0)
