"""GET /metrics: Prometheus text format. Open like /health*: scrapers carry no API key."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

router = APIRouter()


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text exposition",
            "content": {"text/plain": {"example": 'upscaler_queue_depth{device="cpu"} 0.0\n'}},
        }
    },
)
async def metrics(request: Request) -> Response:
    """Requests by route and status, inference time, queues, fallbacks, models and the memory budget."""
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
