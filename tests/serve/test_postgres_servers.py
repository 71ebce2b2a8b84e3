"""Two `kollm serve` processes on one PostgreSQL store: 8 clients post 50 ratings each through
both while the production alias is promoted and rolled back. Every rating is counted once and
the alias history has both moves in order."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from kollm.feedback.responses import RequestLog
from kollm.registry import Registry
from kollm.store import connect
from tests.postgres import share_registry

CLIENTS, RATINGS = 8, 50


@pytest.fixture
def two_servers(served_home, postgres_url, monkeypatch, tmp_path):
    """Base URLs of two servers of `tiny@production` on the test's PostgreSQL schema, each
    client with a key of its own (50 ratings stay under the hourly count of a key)."""
    from kollm.pipeline.serving import free_port

    monkeypatch.setenv("KOLLM_DATABASE_URL", postgres_url)
    share_registry(served_home)
    keys = tmp_path / "keys"
    keys.write_text("".join(f"key-{i} viewer client-{i}\n" for i in range(CLIENTS)))
    keys.chmod(0o600)
    kollm = Path(sys.executable).parent / "kollm"
    env = {**os.environ, "KOLLM_HOME": str(served_home)}
    servers = []
    for _ in range(2):
        port = free_port()
        command = [str(kollm), "serve", "tiny@production", "--port", str(port)]
        command += ["--engine", "ctranslate2", "--api-key-file", str(keys), "--alias-poll", "0.5"]
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        servers.append((f"http://127.0.0.1:{port}", process))
    try:
        for url, process in servers:
            _wait(url, process)
        yield [url for url, _ in servers]
    finally:
        for _, process in servers:
            process.terminate()
            process.wait(30)


def _wait(url: str, process) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(process.stderr.read().decode()[-2000:])
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not become ready")


def _client(urls: list[str], i: int, started: threading.Event) -> list[httpx.Response]:
    replies = []
    with httpx.Client(headers={"Authorization": f"Bearer key-{i}"}, timeout=60) as http:
        for j in range(RATINGS):
            rating = {"response_id": f"burst-{i}", "rating": "good" if j % 2 else "bad"}
            replies.append(http.post(urls[j % 2] + "/v1/feedback", json=rating))
            started.set()
    return replies


def test_two_servers_count_every_rating_once_through_a_promote_and_a_rollback(
    two_servers, served_home
):
    registry = Registry(served_home)
    first = registry.get("tiny@production")
    second = registry.register("tiny", first.artifact_path)
    log = RequestLog(served_home)
    for i in range(CLIENTS):
        request = {"model": "tiny", "messages": [{"role": "user", "content": f"질문 {i}"}]}
        log.write(f"burst-{i}", "chat", "tiny", str(first), request, "답", 2, 1, "stop", 1.0)
    started = threading.Event()
    with ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(_client, two_servers, i, started) for i in range(CLIENTS)]
        started.wait(60)
        registry.promote("tiny", second.version)
        registry.rollback("tiny")
        replies = [r for f in futures for r in f.result()]
    assert [r.status_code for r in replies] == [200] * CLIENTS * RATINGS, replies[0].text
    ids = [r.json()["id"] for r in replies]
    assert len(set(ids)) == CLIENTS * RATINGS
    with closing(connect(served_home / "registry.db")) as conn:
        counted = conn.execute(
            "SELECT response_id, COUNT(*) FROM feedback GROUP BY response_id ORDER BY response_id"
        ).fetchall()
    assert [tuple(r) for r in counted] == [(f"burst-{i}", RATINGS) for i in range(CLIENTS)]
    moves = [(e["action"], e["from_version"], e["to_version"]) for e in registry.alias_log("tiny")]
    assert moves[-2:] == [
        ("promote", first.version, second.version),
        ("rollback", second.version, first.version),
    ]
    assert registry.get("tiny@production").version == first.version


def test_a_burst_of_ratings_reuses_a_few_store_connections(
    start_server, served_home, postgres_url, monkeypatch
):
    """40 ratings from 4 clients at once through a server on PostgreSQL open a few store
    connections, not one or more a request (each a server process on the database's host)."""
    import psycopg

    monkeypatch.setenv("KOLLM_DATABASE_URL", postgres_url)
    server = start_server(api_keys=[f"key-{i}" for i in range(4)])
    log = RequestLog(served_home)
    for i in range(4):
        log.write(f"pool-{i}", "chat", "tiny", "tiny:1", {"messages": []}, "답", 2, 1, "stop", 1.0)
    # every connection, the pool's and a direct one, is made by Connection.connect
    opened, connect_to_server = [], psycopg.Connection.connect
    monkeypatch.setattr(
        psycopg.Connection,
        "connect",
        classmethod(lambda _, *a, **k: opened.append(1) or connect_to_server(*a, **k)),
    )

    def rate(i: int) -> list[int]:
        with httpx.Client(headers={"Authorization": f"Bearer key-{i}"}, timeout=60) as http:
            body = {"response_id": f"pool-{i}", "rating": "good"}
            posts = [http.post(server.base_url + "/v1/feedback", json=body) for _ in range(10)]
            return [r.status_code for r in posts]

    with ThreadPoolExecutor(4) as pool:
        codes = [c for done in pool.map(rate, range(4)) for c in done]
    assert codes == [200] * 40
    assert len(opened) <= 4 + 2  # a client each, the alias poll and one to spare
    with closing(connect(served_home / "registry.db")) as conn:
        kept = conn.execute("SELECT COUNT(*) FROM feedback WHERE response_id LIKE 'pool-%'")
        assert kept.fetchone()[0] == 40
