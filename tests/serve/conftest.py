"""A tiny trained model, registered, and a live server on 127.0.0.1 for the openai client."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn

from kollm.config import load_recipe
from kollm.data.pipeline import prepare
from kollm.registry import Registry
from kollm.serve.app import ServeSettings, create_app
from kollm.serve.log import RequestLog
from kollm.serve.metrics import ServerMetrics
from kollm.serve.service import ModelManager
from kollm.train import run_training
from tests.conftest import tiny_recipe_text


@pytest.fixture(scope="session")
def served_home(tmp_path_factory) -> Path:
    """KOLLM_HOME with `tiny` version 1 (trained 40 steps) at production."""
    root = tmp_path_factory.mktemp("serve")
    path = root / "tiny.yaml"
    path.write_text(tiny_recipe_text(root), encoding="utf-8")
    recipe = load_recipe(path, ["train.max_steps=40", "model.max_positions=256"])
    prepare(recipe.data, recipe.data_dir)
    model_dir = run_training(recipe).model_dir
    registry = Registry(root / "home")
    version = registry.register(
        "tiny",
        model_dir,
        base_model="scratch",
        method="sft",
        recipe_text=path.read_text(encoding="utf-8"),
    )
    registry.promote("tiny", version.version)
    return root / "home"


class LiveServer:
    def __init__(self, app) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.base_url = f"http://127.0.0.1:{self.port}"

    def start(self, wait_ready: bool = True) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                status = httpx.get(self.base_url + "/health", timeout=2).status_code
                if status == 200 or (status == 503 and not wait_ready):
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError("server did not become ready")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture
def start_server(served_home):
    """start_server(refs, engine=..., **options) -> a started LiveServer, stopped after the test."""
    servers = []

    def start(
        refs=("tiny@production",),
        engine="ctranslate2",
        api_keys=(),
        wait_ready=True,
        registry_home=served_home,
        alias_poll_s=2.0,
        log_requests=True,
        **manager_options,
    ):
        manager = ModelManager(
            list(refs), engine, ServerMetrics(), registry=Registry(registry_home), **manager_options
        )
        settings = ServeSettings(
            api_keys=list(api_keys),
            alias_poll_s=alias_poll_s,
            request_timeout_s=60,
            log_requests=log_requests,
        )
        server = LiveServer(create_app(manager, settings, RequestLog(registry_home)))
        servers.append(server)
        server.manager = manager
        return server.start(wait_ready)

    yield start
    for server in servers:
        server.stop()
