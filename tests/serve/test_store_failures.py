"""The request log is best effort: a store that cannot take a write (a full disk, a read-only
home) costs the log, never the answer; `/metrics` counts it and `/health` says degraded."""

from __future__ import annotations

import logging
import shutil
import sqlite3

import httpx
import pytest

from kollm.feedback import store as request_log_owner  # owns the `responses` table

CHAT = {
    "model": "tiny",
    "messages": [{"role": "user", "content": "안녕하세요, 예약하고 싶어요."}],
    "max_tokens": 8,
    "temperature": 0,
}


class _FullDisk:
    """A connection whose inserts fail as SQLite's do when the disk is full."""

    def __init__(self, conn) -> None:
        self.conn = conn

    def execute(self, sql, *args):
        if sql.lstrip().upper().startswith("INSERT"):
            raise sqlite3.OperationalError("database or disk is full")
        return self.conn.execute(sql, *args)

    def close(self) -> None:
        self.conn.close()


def _failures(server) -> float:
    for line in httpx.get(server.base_url + "/metrics").text.splitlines():
        if line.startswith('kollm:request_log_failures_total{model_name="tiny"}'):
            return float(line.split()[-1])
    return 0.0


def _stream(server) -> list[str]:
    with httpx.stream(
        "POST", server.base_url + "/v1/chat/completions", json={**CHAT, "stream": True}, timeout=60
    ) as reply:
        assert reply.status_code == 200
        return [line for line in reply.iter_lines() if line]


def test_a_full_disk_keeps_answering_counts_the_failures_and_health_says_degraded(
    start_server, monkeypatch
):
    server = start_server()
    real = request_log_owner.connect
    monkeypatch.setattr(request_log_owner, "connect", lambda path: _FullDisk(real(path)))

    answered = httpx.post(server.base_url + "/v1/chat/completions", json=CHAT, timeout=60)
    assert answered.status_code == 200 and answered.json()["choices"][0]["message"]["content"]
    lines = _stream(server)  # logged after the stream: the client still gets all of it
    assert lines[-1] == "data: [DONE]" and len(lines) >= 3
    assert _failures(server) == 2
    health = httpx.get(server.base_url + "/health")
    assert health.status_code == 200  # answers are right: a load balancer keeps routing
    assert health.json()["status"] == "degraded"
    assert "disk is full" in health.json()["reason"]

    monkeypatch.setattr(request_log_owner, "connect", real)  # space again
    assert httpx.post(server.base_url + "/v1/chat/completions", json=CHAT, timeout=60).is_success
    assert httpx.get(server.base_url + "/health").json()["status"] == "ok"
    assert _failures(server) == 2


@pytest.fixture
def shm_blocked_home(served_home, tmp_path):
    """A copy of the served home whose WAL index (-shm) cannot be created."""
    home = tmp_path / "home"
    shutil.copytree(served_home, home, ignore=shutil.ignore_patterns("*-wal", "*-shm"))
    (home / "registry.db-shm").mkdir()
    return home


def test_a_store_whose_shm_cannot_be_created_starts_serving_degraded(
    start_server, shm_blocked_home, caplog
):
    with caplog.at_level(logging.WARNING, logger="kollm.store"):
        server = start_server(registry_home=shm_blocked_home)
    assert "cannot be written" in caplog.text

    answered = httpx.post(server.base_url + "/v1/chat/completions", json=CHAT, timeout=60)
    assert answered.status_code == 200 and answered.json()["model_version"] == "tiny:1"
    health = httpx.get(server.base_url + "/health")
    assert health.status_code == 200 and health.json()["status"] == "degraded"
    assert "read-only" in health.json()["reason"]
    assert _failures(server) == 1


def test_feedback_on_a_full_disk_is_a_503_the_client_can_retry(start_server, monkeypatch):
    from kollm.feedback import store

    server = start_server()
    answered = httpx.post(server.base_url + "/v1/chat/completions", json=CHAT, timeout=60)
    real = store.connect
    monkeypatch.setattr(store, "connect", lambda path: _FullDisk(real(path)))
    rating = {"response_id": answered.json()["id"], "rating": "good"}
    refused = httpx.post(server.base_url + "/v1/feedback", json=rating)
    assert refused.status_code == 503 and refused.headers["Retry-After"]
    assert "disk is full" in refused.json()["error"]["message"]
    monkeypatch.setattr(store, "connect", real)
    assert httpx.post(server.base_url + "/v1/feedback", json=rating).status_code == 200
