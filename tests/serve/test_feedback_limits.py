"""`POST /v1/feedback` counts ratings per API key: a key past `serve.feedback_per_key_per_hour`
gets 429 with Retry-After and OpenAI's error JSON while another key still posts, and each
rating records its key by name (or a hash), never the key itself."""

from __future__ import annotations

from contextlib import closing

import pytest
from fastapi.testclient import TestClient

from kollm.config import ServeConfig
from kollm.feedback.responses import RequestLog
from kollm.registry import Registry
from kollm.serve.server import Access, build_server
from kollm.store import connect

# every test runs on SQLite and on PostgreSQL (tests/postgres.py)
pytestmark = pytest.mark.usefixtures("store_backend")


@pytest.fixture
def api(tmp_path):
    """The server's app over an empty store (feedback needs no loaded model), keys with and
    without a name, at most 2 ratings a key an hour; and a logged answer to rate."""
    registry = Registry(tmp_path / "home")
    request = {"model": "tiny", "messages": [{"role": "user", "content": "안녕"}]}
    RequestLog(registry.home).write(
        "r1", "chat", "tiny", "tiny:1", request, "네", 2, 1, "stop", 1.0
    )
    cfg = ServeConfig(models=["tiny@production"], feedback_per_key_per_hour=2)
    access = Access(api_keys=["key-a", "key-b"], key_names={"key-a": "민원창구"})
    app, _ = build_server(cfg, registry, access)
    return TestClient(app), registry.home


def _rate(client, key, rating="bad"):
    return client.post(
        "/v1/feedback",
        json={"response_id": "r1", "rating": rating, "correction": "고친 답"},
        headers={"Authorization": f"Bearer {key}"},
    )


def test_a_key_past_its_hourly_feedback_gets_429_and_others_still_post(api):
    client, _ = api
    assert [_rate(client, "key-a").status_code for _ in range(2)] == [200, 200]
    refused = _rate(client, "key-a")
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 3600
    error = refused.json()["error"]
    assert error["type"] == "rate_limit_error" and "feedback_per_key_per_hour" in error["message"]
    assert _rate(client, "key-b").status_code == 200  # each key has its own count


def test_each_rating_records_its_key_by_name_or_hash_never_the_key(api):
    client, home = api
    _rate(client, "key-a")
    _rate(client, "key-b", "good")
    with closing(connect(home / "registry.db")) as conn:
        keys = [k for (k,) in conn.execute("SELECT key_name FROM feedback ORDER BY id")]
    assert keys[0] == "민원창구"
    assert keys[1].startswith("key-") and keys[1] != "key-b"


def test_no_limit_when_the_setting_is_0(tmp_path):
    registry = Registry(tmp_path / "home")
    request = {"model": "tiny", "messages": [{"role": "user", "content": "안녕"}]}
    RequestLog(registry.home).write(
        "r1", "chat", "tiny", "tiny:1", request, "네", 2, 1, "stop", 1.0
    )
    cfg = ServeConfig(models=["tiny@production"], feedback_per_key_per_hour=0)
    app, _ = build_server(cfg, registry, Access())
    client = TestClient(app)
    assert {_rate(client, "").status_code for _ in range(5)} == {200}


def test_without_keys_a_made_up_bearer_value_is_no_key_of_its_own(tmp_path):
    """On a server without keys every caller shares one count (found in review: each new
    Bearer value had a count of its own, so the limit was none)."""
    registry = Registry(tmp_path / "home")
    request = {"model": "tiny", "messages": [{"role": "user", "content": "안녕"}]}
    RequestLog(registry.home).write("r1", "chat", "tiny", "tiny:1", request, "네", 2, 1, "stop", 1)
    cfg = ServeConfig(models=["tiny@production"], feedback_per_key_per_hour=2)
    client = TestClient(build_server(cfg, registry, Access())[0])
    codes = [_rate(client, f"made-up-{i}").status_code for i in range(3)]
    assert codes == [200, 200, 429]
    long = {"response_id": "r1", "rating": "bad", "correction": "가" * 20_000}
    assert client.post("/v1/feedback", json=long).status_code == 400  # 16,000 at most
