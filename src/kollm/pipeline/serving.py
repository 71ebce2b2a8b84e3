"""A kollm server in this process on a free loopback port, for the stages that talk to the
served model over HTTP as users do (the demo, benchmarks through lm-eval)."""

from __future__ import annotations

import threading
import time

import httpx

from kollm.config import RagConfig, ServeConfig
from kollm.engines.upstream import free_port
from kollm.registry import Registry


def serve_in_process(cfg: ServeConfig, registry: Registry, rag: RagConfig | None = None):
    """(uvicorn server, base URL) once /health says ready; set `server.should_exit` to stop."""
    import uvicorn

    from kollm.serve.server import build_server

    app, _ = build_server(cfg, registry, rag=rag)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return server, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.should_exit = True
    raise TimeoutError("the in-process server did not become ready")
