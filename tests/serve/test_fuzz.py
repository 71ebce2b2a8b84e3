"""Schemathesis against the server's own OpenAPI schema, as a hostile client would: every
operation gets schema-valid and schema-breaking requests (huge numbers, odd strings, wrong
types, token ids past the vocabulary) and none may answer 5xx or take the server down. The
requests are bench/fuzz_bench.py's, fewer of them.

The server runs as `kollm serve` in a process of its own, so a crash in an engine's native
code fails this test instead of killing the test run."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytest.importorskip("schemathesis")

KEY = "fuzz-key"


def _bench():
    """bench/fuzz_bench.py as a module (the bench is a script, not a package)."""
    path = Path(__file__).parents[2] / "bench" / "fuzz_bench.py"
    spec = importlib.util.spec_from_file_location("fuzz_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def test_no_request_answers_5xx_or_stops_the_server(kollm_server):
    url, process, log = kollm_server
    statuses, errors, reached = _bench().fuzz(url, 12, "tiny", KEY)
    assert process.poll() is None, f"the server died:\n{log.read_text()[-3000:]}"
    assert len(reached) >= 8, f"schemathesis reached too few operations: {sorted(reached)}"
    assert sum(statuses.values()) > 100
    assert not errors, "\n".join(errors[:20])
    assert httpx.get(url + "/health", timeout=5).status_code == 200
