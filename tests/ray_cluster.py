"""A local Ray cluster for the ray executor and Ray Serve tests: `ray start --head` on 127.0.0.1
with 2 CPUs, started by the first test that uses it and stopped at the end of the session. Any
test directory may use the `ray_cluster` fixture (tests/conftest.py imports it).

`ray stop --force` ends every Ray process of this user on the machine, so a session holds
an exclusive lock on /tmp/kollm-ray.lock while its cluster lives: two test runs on one machine
(two worktrees) take turns instead of stopping each other's cluster.

Under `make test`'s two workers the files that use it run together, on one worker
(tests/xdist_files.py): that worker stops the cluster, and frees the lock, once it moves on to
other files, not at the end of its session."""

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

from tests.xdist_files import uses_ray


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


_RAY = str(Path(sys.executable).parent / "ray")


class _Running:
    """This process's cluster, its lock and temp dir: started by the first test that asks."""

    cluster: RayCluster | None = None
    lock = None
    temp = ""


def _start_locked() -> RayCluster:
    # Every Ray process binds the loopback address only: without this Ray picks the host's
    # outward-facing address for some of its agents. Set before ray is imported (Ray reads it
    # once); and this process's ray.init would turn 127.0.0.1 into that address too.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    # Without it `ray start` turns token auth on whenever ~/.ray/auth_token exists (any local
    # `ray.init()` on the machine writes one), and a driver given the address sends no token.
    os.environ["RAY_AUTH_MODE"] = "disabled"
    pytest.importorskip("ray")
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False
    _Running.lock = open("/tmp/kollm-ray.lock", "w")  # noqa: SIM115 - held while it lives
    fcntl.flock(_Running.lock, fcntl.LOCK_EX)
    _Running.temp = tempfile.mkdtemp(prefix="kray", dir="/tmp")  # short: Ray's sockets live here
    try:
        for _attempt in range(2):  # a cluster whose agent never came up is started once more
            cluster, agent = _start(_RAY, _Running.temp)
            if _agent_ready(agent, AGENT_WAIT_S):
                return cluster
            log = _agent_log(_Running.temp)
            subprocess.run([_RAY, "stop", "--force"], capture_output=True, timeout=120)
        pytest.fail(f"Ray's dashboard agent never answered on port {agent}:\n{log}")
    except BaseException:
        stop_ray_cluster()
        raise


def stop_ray_cluster() -> None:
    """Stops this process's cluster, if it started one, and releases the lock."""
    if _Running.lock is None:
        return
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():  # Ray ends a driver whose GCS is gone
        ray.shutdown()
    subprocess.run([_RAY, "stop", "--force"], capture_output=True, timeout=120)
    shutil.rmtree(_Running.temp, ignore_errors=True)
    _Running.lock.close()  # closing releases the lock
    _Running.cluster, _Running.lock = None, None


@pytest.fixture
def ray_cluster():
    """The local cluster (started on first use, kept for the next tests)."""
    if _Running.cluster is None:
        _Running.cluster = _start_locked()
    return _Running.cluster


def pytest_runtest_teardown(item, nextitem):
    """Under xdist, the cluster stops as this worker leaves the files that use it."""
    if not os.environ.get("PYTEST_XDIST_WORKER") or _Running.lock is None:
        return
    if nextitem is None or not uses_ray(nextitem.path):
        stop_ray_cluster()


def pytest_sessionfinish(session):
    stop_ray_cluster()
