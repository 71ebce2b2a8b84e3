"""Schemathesis against the server's own OpenAPI schema, as a hostile client would: every
operation gets schema-valid and schema-breaking requests (huge numbers, odd strings, wrong
types, token ids past the vocabulary) and none may answer 5xx or take the server down.

The server runs as `kollm serve` in a process of its own, so a crash in an engine's native
code fails this test instead of killing the test run."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402

KEY = "fuzz-key"
# Operations that stream until a job ends or a model answers: schemathesis reads whole bodies.
SKIP = ("/ui/jobs/{job_id}/log",)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def kollm_server(served_home, tmp_path_factory):
    """`kollm serve tiny@production` on loopback with an API key; (base URL, process)."""
    port = _port()
    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys.write_text(f"{KEY} admin fuzzer\n")
    keys.chmod(0o600)
    log = tmp_path_factory.mktemp("fuzzlog") / "serve.log"
    env = {**os.environ, "KOLLM_HOME": str(served_home)}
    command = [str(Path(sys.executable).parent / "kollm"), "serve", "tiny@production"]
    command += ["--port", str(port), "--api-key-file", str(keys), "--timeout", "30"]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    else:
        process.kill()
        pytest.fail(f"kollm serve did not start:\n{log.read_text()[-3000:]}")
    yield url, process, log
    process.terminate()
    process.wait(30)


def _operations(url: str):
    schema = schemathesis.openapi.from_url(
        url + "/openapi.json", headers={"Authorization": f"Bearer {KEY}"}
    )
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path not in SKIP:
            yield operation


def _fuzz(operation, mode, url: str, seen: dict, errors: list, examples: int = 12) -> None:
    """`examples` generated requests to one operation; status codes into `seen`, 5xx and
    dropped connections into `errors`."""
    name = operation.label

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case):
        if isinstance(case.body, dict) and isinstance(case.body.get("model"), str):
            case.body["model"] = "tiny"  # a served model, so requests reach the engine
        try:
            response = case.call(
                base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60
            )
        except Exception as err:  # a dropped connection is what a crash looks like
            errors.append(f"{name}: {type(err).__name__}: {err}")
            return
        seen.setdefault(name, []).append(response.status_code)
        if response.status_code >= 500:
            errors.append(f"{name}: {response.status_code} {response.text[:300]}")

    with contextlib.suppress(Unsatisfiable):  # nothing to break in an operation without parameters
        run()


def test_no_request_answers_5xx_or_stops_the_server(kollm_server):
    url, process, log = kollm_server
    seen: dict[str, list[int]] = {}
    errors: list[str] = []
    for operation in _operations(url):
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz(operation, mode, url, seen, errors)
            assert process.poll() is None, f"the server died:\n{log.read_text()[-3000:]}"
    assert len(seen) >= 8, f"schemathesis reached too few operations: {sorted(seen)}"
    assert sum(len(v) for v in seen.values()) > 100
    assert not errors, "\n".join(errors[:20])
    assert httpx.get(url + "/health", timeout=5).status_code == 200
