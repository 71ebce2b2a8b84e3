"""kollm's server as a Ray Serve application: each replica is the same FastAPI app `kollm serve`
runs, with its own ModelManager (engine, batcher, metrics).

Ray imports `kollm.serve.ray_app:build` with the application's `args` (see
`kollm.cluster.deploy`). A replica loads its models during its ASGI start-up, so Ray routes
it no request before it can answer; every response says which replica answered
(`x-kollm-replica`, its process id in `x-kollm-replica-pid`) and how long that replica took to
start (`x-kollm-replica-start-s`: replica constructor to models loaded, the part of a
scale-to-zero cold start spent in kollm; Ray's scheduling of the replica comes before it).
"""

from __future__ import annotations

import os
import time
from typing import Any

from ray import serve

from kollm.config import RagConfig, ServeConfig
from kollm.registry import Registry
from kollm.serve.server import Access, build_server


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
            Access(list(args.get("api_keys", [])), list(args.get("admin_keys", []))),
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


def build(args: dict[str, Any]):
    """The Ray Serve application for `args` (an import path target for Serve's config)."""
    return KollmReplica.bind(args)
