"""The web console over HTTP (a browser drives it in a later step): login with a key, the
runs page shows a run's metrics, promote and roll back move the alias in the registry and
are audited, a viewer key cannot promote, a form without its CSRF token is refused, Korean by
default and English with ?lang=en, and no page points anywhere but this server."""

from __future__ import annotations

import json
import re
from contextlib import closing

import httpx
import pytest

from kollm.registry import Registry
from kollm.store import connect


@pytest.fixture
def console(start_server, served_home, tmp_path):
    runs = tmp_path / "runs"
    (runs / "demo" / "eval").mkdir(parents=True)
    (runs / "demo" / "eval" / "stage.json").write_text(json.dumps({"summary": "model 57.46"}))
    (runs / "demo" / "eval" / "metrics.json").write_text(json.dumps({"model": {"score": 57.46}}))
    (runs / "demo" / "eval" / "report.html").write_text("<h1>report</h1>")
    server = start_server(api_keys=("viewer-key",), admin_keys=("admin-key",), runs_dir=runs)
    return server


def _login(server, key):
    client = httpx.Client(base_url=server.base_url, follow_redirects=True)
    token = _csrf(client.get("/ui/login").text)  # the login form's token (with its cookie)
    page = client.post("/ui/login", data={"key": key, "csrf": token})
    assert page.status_code == 200
    client.headers["x-csrf-token"] = page_token(page.text)  # as the playground sends it
    return client, page


def page_token(html):
    """The CSRF token a console page gives its scripts for calls to the API."""
    return re.search(r'<meta name="csrf-token" content="([0-9a-f]+)">', html).group(1)


def _csrf(html):
    return re.search(r'name="csrf" value="([0-9a-f]+)"', html).group(1)


def test_login_and_the_runs_page(console):
    anonymous = httpx.get(console.base_url + "/ui/runs", follow_redirects=False)
    assert anonymous.status_code == 303 and anonymous.headers["location"] == "/ui/login"
    client, page = _login(console, "viewer-key")
    assert "실행 기록" in page.text and "demo" in page.text and "57.460" in page.text
    assert client.get("/ui/runs/demo/report.html").text == "<h1>report</h1>"
    assert client.get("/ui/runs/demo/..%2F..%2Fetc%2Fpasswd").status_code == 404
    assert "Runs" in client.get("/ui/runs?lang=en").text
    stranger = httpx.Client(base_url=console.base_url)
    token = _csrf(stranger.get("/ui/login").text)
    wrong = stranger.post("/ui/login", data={"key": "nope", "csrf": token})
    assert wrong.status_code == 303 and "failed=1" in wrong.headers["location"]


@pytest.mark.usefixtures("served_store")  # alias moves and the audit on both stores
def test_admin_promotes_and_rolls_back_and_each_is_audited(console, served_home, local_base):
    registry = Registry(served_home)
    v2 = registry.register("tiny", local_base, base_model="scratch", method="sft")
    client, _ = _login(console, "admin-key")
    registry.add_export("tiny:1", "gguf", "/x/tiny-q4_k_m.gguf", "ab" * 32, 9_000_000)
    figures = {"ppl_ratio": 1.0123, "token_agreement": 0.93, "long": {"ppl_ratio": 1.0456}}
    registry.set_export_quality("tiny:1", "ab" * 32, figures)
    page = client.get("/ui/registry")
    token = _csrf(page.text)
    # a conversion's figures against its registered weights are shown beside the version
    assert "변환 품질" in page.text and '<table id="conversions">' in page.text
    assert "1.0123" in page.text and "1.0456" in page.text and "0.93" in page.text
    client.post(
        "/ui/registry/promote",
        data={"name": "tiny", "version": v2.version, "alias": "production", "csrf": token},
    )
    assert registry.get("tiny@production").version == v2.version
    client.post(
        "/ui/registry/rollback", data={"name": "tiny", "alias": "production", "csrf": token}
    )
    assert registry.get("tiny@production").version == 1
    with closing(connect(served_home / "registry.db")) as conn:
        rows = [
            tuple(r)
            for r in conn.execute("SELECT action, target, key_name FROM audit_log ORDER BY id")
        ]
    assert rows[-2:] == [
        ("promote", "tiny@production", rows[-1][2]),
        ("rollback", "tiny@production", rows[-1][2]),
    ]
    assert rows[-1][2].startswith("key-") and "admin-key" not in rows[-1][2]


def test_a_viewer_cannot_promote_and_a_form_needs_its_token(console, served_home):
    viewer, _ = _login(console, "viewer-key")
    assert "승격" not in viewer.get("/ui/registry").text  # no promote buttons for a viewer
    refused = viewer.post("/ui/registry/promote", data={"name": "tiny", "version": 1, "csrf": "x"})
    assert refused.status_code == 403
    admin, _ = _login(console, "admin-key")
    forged = admin.post("/ui/registry/rollback", data={"name": "tiny", "csrf": "forged"})
    assert forged.status_code == 403 and "CSRF" in forged.text
    assert Registry(served_home).get("tiny@production").version == 1


@pytest.mark.usefixtures("served_store")  # the request log, feedback and queue on both
def test_feedback_queue_and_chat_page(console, served_home):
    client, _ = _login(console, "viewer-key")
    answer = client.post(
        "/v1/chat/completions",
        json={
            "model": "tiny",
            "messages": [{"role": "user", "content": "택배가 안 와요"}],
            "max_tokens": 4,
        },
    )  # the login cookie authorises the API too, as the playground does
    assert answer.status_code == 200
    rid = answer.json()["id"]
    client.post(
        "/v1/feedback",
        json={
            "response_id": rid,
            "rating": "bad",
            "categories": ["hallucination"],
            "correction": "확인해 볼게요",
        },
    )
    queue = client.get("/ui/feedback?category=hallucination")
    assert "택배가 안 와요" in queue.text and "확인해 볼게요" in queue.text
    chat = client.get("/ui/chat")
    assert "<option>tiny</option>" in chat.text and "/ui/static/chat.js" in chat.text


def test_every_asset_is_served_from_here(console):
    client, _ = _login(console, "viewer-key")
    for path in ("/ui/runs", "/ui/registry", "/ui/feedback", "/ui/chat"):
        html = client.get(path).text
        for url in re.findall(r'(?:src|href)="([^"]+)"', html):
            assert url.startswith("/") or url.startswith("?"), (path, url)
    assert client.get("/ui/static/htmx.min.js").text.startswith("var htmx")


def test_kollm_ui_serves_the_console_without_models(tmp_path, served_home):
    import os
    import subprocess
    import sys
    import time

    from kollm.pipeline.serving import free_port

    port = free_port()
    env = {**os.environ, "KOLLM_HOME": str(served_home)}
    process = subprocess.Popen(
        [sys.executable, "-m", "kollm", "ui", "--port", str(port), "--admin-key", "a"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            try:
                page = httpx.get(f"http://127.0.0.1:{port}/ui/registry", timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert page.status_code == 303  # an admin key alone locks the console too
        server = type("Server", (), {"base_url": f"http://127.0.0.1:{port}"})
        client, _ = _login(server, "a")
        page = client.get("/ui/registry")
        assert page.status_code == 200 and "tiny:1" in page.text
    finally:
        process.terminate()
        process.wait(10)


def test_a_review_changes_what_the_export_trains_on_and_agreement_is_shown(
    start_server, served_home, tmp_path
):
    from kollm.feedback.export import export_feedback
    from kollm.feedback.store import FeedbackStore
    from tests.conftest import read_jsonl

    server = start_server(api_keys=("viewer-key",), admin_keys=("admin-key", "admin-2"))
    client, _ = _login(server, "viewer-key")
    rid = client.post(
        "/v1/chat/completions",
        json={
            "model": "tiny",
            "messages": [{"role": "user", "content": "환불은 어떻게 하나요?"}],
            "max_tokens": 4,
        },
    ).json()["id"]
    item = client.post(
        "/v1/feedback", json={"response_id": rid, "rating": "bad", "categories": ["evasive"]}
    ).json()["id"]
    assert "검토 저장" not in client.get("/ui/feedback").text  # a viewer cannot review
    refused = client.post(f"/ui/feedback/{item}/review", data={"csrf": "x"})
    assert refused.status_code == 403
    for key in ("admin-key", "admin-2"):
        admin, _page = _login(server, key)
        token = _csrf(admin.get("/ui/feedback").text)
        done = admin.post(
            f"/ui/feedback/{item}/review",
            data={
                "csrf": token,
                "categories": ["hallucination"],
                "correction": "영수증을 지참해 고객센터에 요청하시면 됩니다.",
            },
        )
        assert done.status_code == 200
    (row,) = [r for r in FeedbackStore(served_home).rows() if r["id"] == item]
    assert row["categories"] == ["hallucination"] and row["original_categories"] == ["evasive"]
    export_feedback([row], "sft", tmp_path / "export")
    (exported,) = read_jsonl(tmp_path / "export" / "sft.jsonl")
    assert exported["output"] == "영수증을 지참해 고객센터에 요청하시면 됩니다."
    assert "검토자 일치: 1 / 1" in admin.get("/ui/feedback").text


def test_promote_and_rollback_refuse_a_bad_request_with_its_reason(console, served_home):
    admin, _ = _login(console, "admin-key")
    token = _csrf(admin.get("/ui/registry").text)
    unknown = admin.post(
        "/ui/registry/promote", data={"name": "tiny", "version": 999, "csrf": token}
    )
    assert unknown.status_code == 400 and "no version 999 of 'tiny'" in unknown.text
    no_alias = admin.post(
        "/ui/registry/rollback", data={"name": "tiny", "alias": "canary", "csrf": token}
    )
    assert no_alias.status_code == 400 and "no alias 'canary'" in no_alias.text
    bad = admin.post(
        "/ui/registry/promote",
        data={"name": "tiny", "version": 1, "alias": "<script>alert(1)</script>", "csrf": token},
    )
    assert bad.status_code == 400 and "invalid alias" in bad.text
    assert "<script>" not in bad.text and "&lt;script&gt;" in bad.text  # echoed, escaped
    assert "<script>" not in [v.aliases for v in Registry(served_home).list()]


def test_error_pages_escape_what_the_request_sent(console):
    admin, _ = _login(console, "admin-key")
    token = _csrf(admin.get("/ui/feedback").text)
    review = admin.post(
        "/ui/feedback/1/review", data={"csrf": token, "categories": ["<script>x()</script>"]}
    )
    assert review.status_code == 400 and "&lt;script&gt;" in review.text
    pick = admin.post(
        "/ui/candidates/pick",
        data={"file": "<img src=x onerror=alert(1)>", "sha": "0", "picked": 0, "csrf": token},
    )
    assert pick.status_code == 404 and "&lt;img" in pick.text and "<img" not in pick.text
    for page in (review, pick):
        assert "<script>" not in page.text
