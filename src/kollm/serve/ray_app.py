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

from kollm.registry import Registry
from kollm.serve.app import ServeSettings, create_app
from kollm.serve.log import RequestLog
from kollm.serve.metrics import ServerMetrics
from kollm.serve.service import ModelManager


@serve.deployment(name="kollm")
@serve.ingress()
class KollmReplica:
    def __init__(self, args: dict[str, Any]) -> None:
        self.args = args
        self.born = time.monotonic()

    def __serve_build_asgi_app__(self):
        args = self.args
        registry = Registry(args.get("home"))
        manager = ModelManager(
            list(args["models"]),
            args.get("engine", "ctranslate2"),
            ServerMetrics(),
            registry=registry,
            max_batch=args.get("max_batch", 8),
            max_queue=args.get("max_queue", 64),
        )
        started: dict[str, float] = {}

        def ready() -> None:
            started["s"] = time.monotonic() - self.born

        settings = ServeSettings(
            api_keys=list(args.get("api_keys", [])),
            request_timeout_s=args.get("request_timeout_s", 120.0),
            log_requests=args.get("log_requests", True),
            alias_poll_s=args.get("alias_poll_s", 2.0),
            load_before_ready=True,
            on_ready=ready,
        )
        request_log = RequestLog(registry.home) if settings.log_requests else None
        app = create_app(manager, settings, request_log)
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


def build(args: dict[str, Any]):
    """The Ray Serve application for `args` (an import path target for Serve's config)."""
    return KollmReplica.bind(args)
