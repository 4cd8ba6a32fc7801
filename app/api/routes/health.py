"""GET /health (what can serve), /health/live (process answers), /health/ready (start-up done)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.api.deps import StateDep
from app.schemas import BackendHealth, Health, ModelHealth, QueueHealth, Ready

router = APIRouter()


HEALTH_EXAMPLE = {
    "status": "ok",
    "ready": True,
    "realesrgan_available": True,
    "default_model": "rrdb-x2",
    "fallback": "lanczos",
    "backends": {
        "pytorch": {
            "available": True,
            "version": "2.13.0",
            "device": "cpu",
            "precision": "fp32",
            "reason": None,
        },
        "coreml": {"available": False, "version": None, "reason": "Core ML runs only on macOS"},
    },
    "models": [
        {
            "name": "RealESRGAN_x4plus",
            "backend": "pytorch",
            "file": "RealESRGAN_x4plus.pth",
            "arch": "RRDBNet",
            "scale": 4,
            "available": True,
            "reason": None,
            "serving": True,
            "tile": 256,
            "precision": "fp32",
            "source": "native",
            "hyperparameters": {"scale": 4, "in_ch": 3, "out_ch": 3, "num_feat": 64, "num_block": 23},
        }
    ],
    "queues": [{"device": "cpu", "in_flight": 0, "waiting": 0, "capacity": 16}],
    "fallbacks": {},
}


@router.get(
    "/health",
    response_model=Health,
    responses={200: {"content": {"application/json": {"example": HEALTH_EXAMPLE}}}},
)
async def health(state: StateDep) -> Health:
    """Which backends and models can serve, and why not: always 200 while the process runs. `status`
    is `starting` until start-up loading is done, then `ok` (a neural model can serve) or `degraded`
    (LANCZOS only)."""
    registry, service = state.registry, state.service
    models = []
    for m in registry.models:
        serving = registry.serving(m.name) is m
        desc = m.descriptor
        models.append(
            ModelHealth(
                name=m.name,
                backend=m.backend,
                file=m.file.name,
                arch=desc.family if desc else m.meta.get("arch"),
                scale=m.scale,
                available=m.available,
                reason=m.reason,
                fallback_reason=m.fallback_reason,
                serving=serving,
                tile=getattr(m.runner, "default_tile", None),
                precision=getattr(m.runner, "precision", None),
                source=desc.source if desc else None,
                hyperparameters=dict(desc.health()) if desc else {},
                duplicate_of=m.duplicate_of,
                meta=m.meta,
            )
        )
    neural = bool(registry.available())
    status: Literal["ok", "degraded", "starting"] = "ok" if neural else "degraded"
    if not state.ready:
        status = "starting"
    backends = {
        name: BackendHealth(
            available=s.available, version=s.version, device=s.device, precision=s.precision, reason=s.reason
        )
        for name, s in ((n, b.status()) for n, b in state.backends.items())
    }
    queues = [
        QueueHealth(device=q.device, in_flight=q.in_flight, waiting=max(0, q.waiting), capacity=q.queue_size)
        for q in service.queues.values()
    ]
    return Health(
        status=status,
        ready=state.ready,
        realesrgan_available=neural,
        default_model=service.default_model() if state.ready else None,
        backends=backends,
        models=models,
        queues=queues,
        fallbacks=dict(service.fallbacks),
    )


@router.get(
    "/health/live", responses={200: {"content": {"application/json": {"example": {"status": "alive"}}}}}
)
async def live() -> dict[str, str]:
    """200 while the process can answer (a liveness probe)."""
    return {"status": "alive"}


@router.get(
    "/health/ready",
    responses={
        200: {
            "model": Ready,
            "description": "start-up loading is done",
            "content": {"application/json": {"example": {"ready": True, "status": "ok"}}},
        },
        503: {
            "model": Ready,
            "description": "start-up loading is not done, or shutting down",
            "content": {"application/json": {"example": {"ready": False, "status": "starting"}}},
        },
    },
)
async def ready(state: StateDep) -> JSONResponse:
    """503 until start-up loading is done (and while draining), then 200: a readiness probe."""
    if state.draining:  # so load balancers stop sending work while in-flight requests finish
        return JSONResponse({"ready": False, "status": "draining"}, status_code=503)
    if not state.ready:
        return JSONResponse({"ready": False, "status": "starting"}, status_code=503)
    return JSONResponse({"ready": True, "status": "ok" if state.registry.available() else "degraded"})
