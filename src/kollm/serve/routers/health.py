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
    """200 with the served versions once ready, else 503 with the reason. Serving without
    its request log (a full disk, a read-only store) is `degraded`, with the reason, and
    still 200: the answers are right, so a load balancer keeps routing; monitoring reads the
    status and `kollm:request_log_failures`."""
    manager, request_log = state(request).manager, state(request).request_log
    if manager.ready:
        body = {
            "status": "ok",
            "models": {m.model_id: m.version for m in manager.models.values()},
        }
        engines = {m.model_id: m.engine.health() for m in manager.models.values()}
        engines = {k: v for k, v in engines.items() if v}
        if engines:  # an engine's own server process: up, and how often it was restarted
            body["engines"] = engines
        failed = {k: v["failure"] for k, v in engines.items() if v.get("failure")}
        if failed:  # an engine that will not come back: route elsewhere
            reason = "; ".join(f"{k}: {why}" for k, why in failed.items())
            return JSONResponse({**body, "status": "failed", "reason": reason}, status_code=503)
        down = [k for k, v in engines.items() if "down" in v.values()]
        problem = request_log.problem if request_log is not None else None
        if down:
            body.update(status="degraded", reason=f"engine down: {', '.join(down)}")
        elif problem:
            body.update(status="degraded", reason=f"request log: {problem}")
        return body
    return JSONResponse(
        {"status": "loading" if not manager.failure else "failed", "reason": manager.failure},
        status_code=503,
    )


@router.get("/metrics", dependencies=[Depends(authorize)])
async def prometheus(request: Request):
    """Prometheus metrics."""
    registry = state(request).manager.metrics.registry
    return PlainTextResponse(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
