"""A local Ray cluster for the ray executor and Ray Serve tests: `ray start --head` on 127.0.0.1
with 2 CPUs, started once for the session and stopped after it. Any test directory may use the
`ray_cluster` fixture (tests/conftest.py imports it).

`ray stop --force` ends every Ray process of this user on the machine, so a session holds
an exclusive lock on /tmp/kollm-ray.lock while its cluster lives: two test runs on one machine
(two worktrees) take turns instead of stopping each other's cluster."""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RayCluster:
    address: str  # the GCS, for ray.init
    dashboard: str  # http://127.0.0.1:PORT, for the Jobs and Serve REST APIs
    serve_port: int


AGENT_WAIT_S = 90


def _start(ray: str, temp: str) -> tuple[RayCluster, int]:
    gcs, dashboard, agent = _free_port(), _free_port(), _free_port()
    command = [ray, "start", "--head", "--num-cpus", "2", "--num-gpus", "0"]
    command += ["--node-ip-address", "127.0.0.1", "--port", str(gcs), "--temp-dir", temp]
    command += ["--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard)]
    command += ["--ray-client-server-port", str(_free_port()), "--disable-usage-stats"]
    # Every port the dashboard agent opens is named: a default one taken on a busy CI machine
    # leaves a cluster whose Jobs API answers "No available agent" forever.
    command += ["--dashboard-agent-listen-port", str(agent)]
    command += ["--dashboard-agent-grpc-port", str(_free_port())]
    command += ["--metrics-export-port", str(_free_port())]
    command += ["--runtime-env-agent-port", str(_free_port())]
    started = subprocess.run(command, capture_output=True, text=True, timeout=180)
    if started.returncode != 0:
        pytest.fail(f"ray start failed:\n{started.stdout}\n{started.stderr}")
    cluster = RayCluster(f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dashboard}", _free_port())
    return cluster, agent


def _agent_ready(port: int, seconds: float) -> bool:
    """True once the job agent answers its health check: `ray start` returns before it does."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/healthz", timeout=5) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(1)
    return False


def _agent_log(temp: str) -> str:
    logs = sorted(Path(temp).glob("session_*/logs/dashboard_agent*"))
    return "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-3000:]}" for p in logs)


@pytest.fixture(scope="session")
def ray_cluster():
    pytest.importorskip("ray")
    ray = str(Path(sys.executable).parent / "ray")
    # Every Ray process binds the loopback address only: without this Ray picks the host's
    # outward-facing address for some of its agents.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    # Without it `ray start` turns token auth on whenever ~/.ray/auth_token exists (any local
    # `ray.init()` on the machine writes one), and a driver given the address sends no token.
    os.environ["RAY_AUTH_MODE"] = "disabled"
    lock = open("/tmp/kollm-ray.lock", "w")  # noqa: SIM115 - held for the whole session
    fcntl.flock(lock, fcntl.LOCK_EX)
    temp = tempfile.mkdtemp(prefix="kray", dir="/tmp")  # short: Ray's unix sockets live here
    try:
        for _attempt in range(2):  # a cluster whose agent never came up is started once more
            cluster, agent = _start(ray, temp)
            if _agent_ready(agent, AGENT_WAIT_S):
                break
            log = _agent_log(temp)
            subprocess.run([ray, "stop", "--force"], capture_output=True, timeout=120)
        else:
            pytest.fail(f"Ray's dashboard agent never answered on port {agent}:\n{log}")
        yield cluster
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)
        lock.close()  # closing releases the lock
