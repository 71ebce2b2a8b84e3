"""kollm's server as a Ray Serve application: each replica is the same FastAPI app `kollm serve`
runs, with its own ModelManager (engine, batcher, metrics).

Ray imports `kollm.serve.ray_app:build` with the application's `args` (see
`kollm.cluster.deploy`). A replica loads its models during its ASGI start-up, so Ray routes
it no request before it can answer; every response says which replica answered
(`x-kollm-replica`, its process id in `x-kollm-replica-pid`) and how long that replica took to
start (`x-kollm-replica-start-s`: replica constructor to models loaded, the part of a
scale-to-zero cold start spent in kollm; Ray's scheduling of the replica comes before it).

A replica takes its keys from the args (`api_key_file`, the recipe's `serve.api_key_file`, a
path on storage every node sees; `api_keys`, `admin_keys`) and from its environment
(KOLLM_API_KEY_FILE, KOLLM_API_KEY, KOLLM_ADMIN_KEY), and the secret that signs console logins
from KOLLM_SECRET, KOLLM_SECRET_FILE or `secret_file` (else from the keys, the same on every
replica).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

from ray import serve

from kollm.config import RagConfig, ServeConfig
from kollm.registry import Registry
from kollm.serve.keys import gather_keys
from kollm.serve.server import Access, build_server
from kollm.serve.sessions import configured_secret


@serve.deployment(name="kollm")
@serve.ingress()
class KollmReplica:
    def __init__(self, args: dict[str, Any]) -> None:
        self.args = args
        self.born = time.monotonic()

    def __serve_build_asgi_app__(self):
        args = self.args
        started: dict[str, float] = {}

        def ready() -> None:
            started["s"] = time.monotonic() - self.born

        app, _ = build_server(
            replica_config(args),
            Registry(args.get("home")),
            replica_access(args),
            load_before_ready=True,
            on_ready=ready,
            rag=RagConfig.model_validate(args["rag_settings"]) if "rag_settings" in args else None,
        )
        replica = serve.get_replica_context().replica_id.unique_id

        @app.middleware("http")
        async def which_replica(request, call_next):
            response = await call_next(request)
            response.headers["x-kollm-replica"] = replica
            response.headers["x-kollm-replica-pid"] = str(os.getpid())
            if "s" in started:
                response.headers["x-kollm-replica-start-s"] = f"{started['s']:.2f}"
            return response

        return app


def replica_config(args: dict[str, Any]) -> ServeConfig:
    """The replica's `serve` settings from the application's args: the same fields as a
    recipe's `serve` section (models, engine, batch and queue sizes, adapters, domains ...)."""
    fields = set(ServeConfig.model_fields)
    return ServeConfig.model_validate({k: v for k, v in args.items() if k in fields})


def replica_access(args: dict[str, Any], env: Mapping[str, str] = os.environ) -> Access:
    """Who may call the replica: the keys of its args and environment (see the module doc)."""
    keys = gather_keys(api_key_file=args.get("api_key_file"), env=env)
    api = [*args.get("api_keys", []), *keys.api_keys]
    admin = [*args.get("admin_keys", []), *keys.admin_keys]
    secret = configured_secret(args.get("secret_file"), env)
    return Access(api, admin, None, keys.names, secret)


def build(args: dict[str, Any]):
    """The Ray Serve application for `args` (an import path target for Serve's config)."""
    return KollmReplica.bind(args)
