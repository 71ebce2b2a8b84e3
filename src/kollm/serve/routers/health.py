"""`GET /health` (503 until every model loaded and answered its sanity prompt; open, for probes)
and `GET /metrics` (Prometheus; behind the API keys when any is set: the scraper sends one)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kollm.serve.deps import authorize, state

router = APIRouter()


@router.get("/health")
async def health(request: Request):
    """200 with the served versions once ready, else 503 with the reason."""
    manager = state(request).manager
    if manager.ready:
        return {
            "status": "ok",
            "models": {m.model_id: m.version for m in manager.models.values()},
        }
    return JSONResponse(
        {"status": "loading" if not manager.failure else "failed", "reason": manager.failure},
        status_code=503,
    )


@router.get("/metrics", dependencies=[Depends(authorize)])
async def prometheus(request: Request):
    """Prometheus metrics."""
    registry = state(request).manager.metrics.registry
    return PlainTextResponse(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
