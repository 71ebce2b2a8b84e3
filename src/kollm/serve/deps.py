"""What every route depends on: the server's state, API and admin keys, readiness."""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import Depends, Request

from kollm.serve.errors import ApiError
from kollm.serve.sessions import SESSION_S, Sessions

if TYPE_CHECKING:
    from collections.abc import Callable

    from kollm.feedback.responses import RequestLog
    from kollm.serve.retrieval import RagService
    from kollm.serve.service import ModelManager
    from kollm.serve.serving_chat import ChatServing
    from kollm.serve.serving_completion import CompletionServing
    from kollm.serve.serving_engine import ServingEngine


@dataclass
class ServeSettings:
    api_keys: list[str] = field(default_factory=list)
    # Keys of the admin endpoints (load/unload adapters); with none, those endpoints are off.
    admin_keys: list[str] = field(default_factory=list)
    request_timeout_s: float = 120.0
    log_requests: bool = True
    alias_poll_s: float = 2.0
    default_max_tokens: int = 128
    max_body_mb: float | None = 4.0  # a larger request body gets 413 (None: no limit)
    # Load the models before the app takes traffic (a Ray Serve replica is routed requests once
    # its ASGI start-up returns; `kollm serve` exits 2 when one cannot load).
    load_before_ready: bool = False
    on_ready: Callable[[], None] | None = None  # called once the models are loaded
    runs_dir: Path | None = None  # the console's Runs screen reads recipe runs here [./runs]
    key_names: dict[str, str] = field(default_factory=dict)  # what the audit log calls a key
    # Signs the console's logins and form tokens; None: derived from the keys (see sessions).
    secret: bytes | None = None
    session_s: float = SESSION_S  # how long a console login lasts
    feedback_per_key_per_hour: int = 300  # ratings a key may post an hour; 0: no limit
    tool_parser: str = "auto"  # serve.tool_parser: how answers' tool calls are read
    unconstrained_json: bool = False  # serve.unconstrained_json: see the recipe's docs


@dataclass
class ServerState:
    manager: ModelManager
    settings: ServeSettings
    request_log: RequestLog | None
    rag: RagService
    sessions: Sessions
    chat: ChatServing  # /v1/chat/completions
    completion: CompletionServing  # /v1/completions
    serving: ServingEngine  # what /tokenize and /v1/embeddings share with them


def state(request: Request) -> ServerState:
    """The server's state (manager, settings, request log, the serving classes)."""
    return request.app.state.kollm


# The web console's login: a signed session token (never the key), HttpOnly, SameSite=Strict,
# Secure over https.
UI_COOKIE = "kollm_session"
CSRF_HEADER = "x-csrf-token"  # what the console's scripts send beside the cookie
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def given_key(request: Request) -> str:
    """The key a request carries: its Bearer header, else the key of the console's login."""
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:]
    token = request.cookies.get(UI_COOKIE, "")
    if not token:
        return ""
    sessions = state(request).sessions
    key = sessions.key_of(token)
    if key and request.method not in SAFE_METHODS and not request.url.path.startswith("/ui/"):
        # The API through the login cookie: SameSite stops other sites, not another page of
        # this one (a sibling subdomain, another port), so the console's own pages send the
        # CSRF token too (the console's forms check theirs).
        expected = sessions.sign("csrf", key)[:32]
        if not hmac.compare_digest(
            request.headers.get(CSRF_HEADER, "").encode(), expected.encode()
        ):
            return ""
    return key


def _key_matches(request: Request, keys: list[str]) -> bool:
    given = given_key(request)
    # compare_digest against every key, so timing tells nothing about which matched
    return any([hmac.compare_digest(given.encode(), key.encode()) for key in keys])


def authorize(request: Request) -> None:
    """401 unless the request carries one of the API or admin keys (when any is set: a server
    with admin keys alone is not open to everyone); an admin key calls the API too."""
    settings = state(request).settings
    keys = [*settings.api_keys, *settings.admin_keys]
    if keys and not _key_matches(request, keys):
        raise ApiError(401, "missing or invalid API key", "authentication_error")


def authorize_admin(request: Request) -> None:
    """403 without admin keys; 401 unless the request carries one."""
    keys = state(request).settings.admin_keys
    if not keys:
        raise ApiError(
            403, "adapter loading is off: start the server with --admin-key", "forbidden"
        )
    if not _key_matches(request, keys):
        raise ApiError(401, "missing or invalid admin key", "authentication_error")


def ready(request: Request) -> None:
    """503 with Retry-After until every model has loaded."""
    manager = state(request).manager
    if not manager.ready:
        reason = manager.failure or "models are still loading"
        raise ApiError(
            503, f"not ready: {reason}", "service_unavailable", headers={"Retry-After": "5"}
        )


GUARD = [Depends(authorize), Depends(ready)]
ADMIN = [Depends(authorize_admin), Depends(ready)]
