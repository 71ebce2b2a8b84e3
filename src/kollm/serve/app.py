"""The FastAPI app: the routers (one per resource), OpenAI's error JSON, and the lifespan that
loads the models, watches aliases and drains the requests in flight at shutdown.
`kollm.serve.server.build_server` assembles it from a recipe's `serve` section."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

from fastapi import FastAPI

from kollm.feedback.responses import RequestLog
from kollm.serve.deps import ServerState, ServeSettings
from kollm.serve.errors import ApiError, install_handlers
from kollm.serve.generation import GenerationService
from kollm.serve.retrieval import RagService
from kollm.serve.routers import ROUTERS
from kollm.serve.service import ModelManager
from kollm.serve.sessions import Sessions, shared_secret
from kollm.serve.ui import router as console

__all__ = ["ApiError", "ServeSettings", "create_app"]


def create_app(
    manager: ModelManager,
    settings: ServeSettings,
    request_log: RequestLog | None = None,
    rag: RagService | None = None,
) -> FastAPI:
    """The app over `manager`'s models; `request_log` None logs nothing (and takes no feedback);
    `rag` answers requests from document collections (default: none bound, default settings)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loader = asyncio.create_task(manager.start())
        if settings.load_before_ready:
            await loader
            if manager.failure:  # fail the start-up: `kollm serve` exits, Ray starts another
                raise RuntimeError(f"loading models failed: {manager.failure}")
            if settings.on_ready is not None:
                settings.on_ready()
        watcher = asyncio.create_task(manager.watch_aliases(settings.alias_poll_s))
        yield
        watcher.cancel()
        await loader
        await manager.close()  # finishes the requests in flight

    # the docs and schema are routes of their own, behind the keys (routers/docs.py)
    app = FastAPI(title="kollm", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    service = GenerationService(
        manager,
        request_log,
        settings.request_timeout_s,
        settings.default_max_tokens,
        settings.log_requests,
    )
    rag = rag or RagService(None, None, request_log.home if request_log else None)
    keys = [*settings.api_keys, *settings.admin_keys]
    sessions = Sessions(shared_secret(settings.secret, keys), keys, settings.session_s)
    app.state.kollm = ServerState(manager, settings, request_log, service, rag, sessions)
    install_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    app.include_router(console)
    return app
