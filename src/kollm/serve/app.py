"""The FastAPI app: the routers (one per resource), OpenAI's error JSON, the request body
limit, and the lifespan that loads the models, watches aliases and drains the requests in
flight at shutdown. `kollm.serve.server.build_server` assembles it from a recipe's `serve`
section."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

from fastapi import FastAPI

from kollm.feedback.responses import RequestLog
from kollm.serve.deps import ServerState, ServeSettings
from kollm.serve.errors import ApiError, error_response, install_handlers
from kollm.serve.retrieval import RagService
from kollm.serve.routers import ROUTERS
from kollm.serve.service import ModelManager
from kollm.serve.serving_chat import ChatServing
from kollm.serve.serving_completion import CompletionServing
from kollm.serve.serving_engine import ServingEngine
from kollm.serve.sessions import Sessions, shared_secret
from kollm.serve.ui import router as console

__all__ = ["ApiError", "BodyLimit", "ServeSettings", "create_app"]

MB = 1024 * 1024


class BodyLimit:
    """Refuses a request body over `max_mb` with 413 in OpenAI's error JSON before the app
    parses it: at once by its Content-Length, or, for a chunked body, at the chunk that passes
    the limit (the app then sees the client leave, and whatever it answers is dropped). No more
    than the limit is ever held."""

    def __init__(self, app, max_mb: float) -> None:
        self.app, self.max_mb = app, max_mb
        self.max_bytes = int(max_mb * MB)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        received, refused, started = 0, False, False

        async def counted_receive():
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    refused = True
                    if not started:
                        await self._refuse(scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message) -> None:
            nonlocal started
            if refused:  # the 413 has gone out: the app's own answer is dropped
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, counted_receive, guarded_send)

    async def _refuse(self, scope, receive, send) -> None:
        response = error_response(
            413,
            f"the request body is larger than this server takes ({self.max_mb:g} MB; the "
            "recipe's serve.max_body_mb sets it)",
            "invalid_request_error",
        )
        await response(scope, receive, send)


def _serving(manager: ModelManager, settings: ServeSettings, request_log, rag: RagService):
    """The serving classes of the generation routes, and their base for the others."""
    args = (manager, request_log, settings.request_timeout_s, settings.default_max_tokens)
    kwargs = {
        "log_requests": settings.log_requests,
        "unconstrained_json": settings.unconstrained_json,
    }
    return (
        ChatServing(*args, rag=rag, tool_parser=settings.tool_parser, **kwargs),
        CompletionServing(*args, **kwargs),
        ServingEngine(*args, **kwargs),
    )


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
    rag = rag or RagService(None, None, request_log.home if request_log else None)
    keys = [*settings.api_keys, *settings.admin_keys]
    sessions = Sessions(shared_secret(settings.secret, keys), keys, settings.session_s)
    app.state.kollm = ServerState(
        manager,
        settings,
        request_log,
        rag,
        sessions,
        *_serving(manager, settings, request_log, rag),
    )
    install_handlers(app)
    if settings.max_body_mb is not None:
        app.add_middleware(BodyLimit, max_mb=settings.max_body_mb)
    for router in ROUTERS:
        app.include_router(router)
    app.include_router(console)
    return app
