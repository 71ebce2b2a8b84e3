"""The web console in a real browser: Playwright drives Debian's Chromium (installed with
apt-get when missing and this is root; never a browser download). Every request the page
makes is routed through the test, which fails on any host but 127.0.0.1. Screenshots of each
screen go to KOLLM_SCREENSHOTS (default: the test's tmp dir)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest

from kollm.rag.index import RagIndex
from kollm.registry import Registry

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _chromium() -> str | None:
    if Path(CHROMIUM).exists():
        return CHROMIUM
    if os.geteuid() == 0 and shutil.which("apt-get"):  # Debian's package, as the setup says
        subprocess.run(["apt-get", "update", "-qq"], check=False, timeout=600)
        packages = ["apt-get", "install", "-y", "-qq", "chromium", "fonts-nanum"]
        subprocess.run(packages, check=False, timeout=900)
    return CHROMIUM if Path(CHROMIUM).exists() else None


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    path = _chromium()
    if path is None:
        pytest.skip("no Chromium: apt-get install chromium")
    with sync_api.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=path, headless=True, args=FLAGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser, start_server, served_home, tmp_path, local_base):
    runs = tmp_path / "runs"
    (runs / "kollm-demo" / "eval").mkdir(parents=True)
    (runs / "kollm-demo" / "eval" / "stage.json").write_text(json.dumps({"summary": "eval done"}))
    metrics = {"model": {"score": 57.46, "rouge1": 0.61}}
    (runs / "kollm-demo" / "eval" / "metrics.json").write_text(json.dumps(metrics))
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "moving.txt").write_text("전입신고는 이사한 날부터 14일 안에 해야 합니다.", "utf-8")
    RagIndex(served_home).index_paths("browser-docs", [docs])
    server = start_server(api_keys=("viewer-key",), admin_keys=("admin-key",), runs_dir=runs)
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    outside: list[str] = []

    def route(r):
        host = urlparse(r.request.url).hostname
        if host != "127.0.0.1":
            outside.append(r.request.url)
            return r.abort()
        return r.continue_()

    context.route("**/*", route)
    tab = context.new_page()
    tab.base = server.base_url
    tab.shots = Path(os.environ.get("KOLLM_SCREENSHOTS", tmp_path / "screens"))
    tab.shots.mkdir(parents=True, exist_ok=True)
    yield tab
    context.close()
    assert outside == [], f"requests left 127.0.0.1: {outside}"


def _login(tab, key: str) -> None:
    tab.goto(tab.base + "/ui/login")
    tab.fill("input[name=key]", key)
    tab.click("button:has-text('로그인')")
    tab.wait_for_url("**/ui/runs")


def test_runs_and_registry_promote_then_roll_back(page, served_home, local_base):
    registry = Registry(served_home)
    v2 = registry.register("tiny", local_base, base_model="scratch", method="sft")
    _login(page, "admin-key")
    assert "57.460" in page.inner_text("#run-kollm-demo")
    page.screenshot(path=str(page.shots / "runs.png"), full_page=True)
    page.goto(page.base + "/ui/registry")
    page.on("dialog", lambda dialog: dialog.accept())  # the confirmation
    row = page.locator(f"tr[data-ref='tiny:{v2.version}']")
    row.locator("button:has-text('승격')").click()
    page.wait_for_load_state()
    assert registry.get("tiny@production").version == v2.version
    assert "production" in page.locator(f"tr[data-ref='tiny:{v2.version}'] .aliases").inner_text()
    page.screenshot(path=str(page.shots / "registry.png"), full_page=True)
    page.locator(f"tr[data-ref='tiny:{v2.version}']").locator("button:has-text('되돌리기')").click()
    page.wait_for_load_state()
    assert registry.get("tiny@production").version == 1
    assert "rollback" in page.inner_text("#audit")


def test_a_viewer_sees_no_promote_button(page):
    _login(page, "viewer-key")
    page.goto(page.base + "/ui/registry")
    assert page.locator("button:has-text('승격')").count() == 0
    assert "관리자 키" in page.inner_text("main")


def test_chat_two_turns_streaming_and_a_rag_answer_with_citations(page, served_home):
    from kollm.feedback.store import FeedbackStore

    _login(page, "viewer-key")
    page.goto(page.base + "/ui/chat")
    page.fill("textarea[name=text]", "안녕하세요")
    page.click("button:has-text('보내기')")
    page.wait_for_function("document.querySelectorAll('#log p.assistant').length == 1")
    page.fill("textarea[name=text]", "전입신고는 며칠 안에 해야 하나요?")
    page.select_option("select[name=collection]", "browser-docs")
    page.click("button:has-text('보내기')")
    page.wait_for_selector("#citations li")
    assert page.locator("#log p.user").count() == 2
    assert "moving.txt" in page.inner_text("#citations")
    page.screenshot(path=str(page.shots / "chat.png"), full_page=True)
    first = page.locator(".rate").first
    first.locator("select").select_option("off-domain")
    first.locator("button[data-rating=bad]").click()
    page.wait_for_function("document.querySelector('.rate .rated').textContent == '✓'")
    rated = FeedbackStore(served_home).rows()[-1]  # the store is the session's: the latest
    assert rated["categories"] == ["off-domain"] and "안녕하세요" in rated["request"]


def test_a_reviewer_corrects_an_answer_in_the_queue(page, served_home, tmp_path):
    import httpx

    from kollm.feedback.export import export_feedback
    from kollm.feedback.store import FeedbackStore
    from tests.conftest import read_jsonl

    headers = {"authorization": "Bearer viewer-key"}
    body = {
        "model": "tiny",
        "max_tokens": 4,
        "messages": [{"role": "user", "content": "주차권은 어디서 사요?"}],
    }
    rid = httpx.post(page.base + "/v1/chat/completions", json=body, headers=headers).json()["id"]
    rated = {"response_id": rid, "rating": "bad", "categories": ["evasive"]}
    item = httpx.post(page.base + "/v1/feedback", json=rated, headers=headers).json()["id"]
    _login(page, "admin-key")
    page.goto(page.base + "/ui/feedback")
    card = page.locator(f"#feedback-{item}")
    card.locator("input[value=hallucination]").check()
    card.locator("input[value=evasive]").uncheck()
    card.locator("textarea[name=correction]").fill("구청 1층 민원실에서 살 수 있습니다.")
    card.locator("button:has-text('검토 저장')").click()
    page.wait_for_load_state()
    page.screenshot(path=str(page.shots / "feedback.png"), full_page=True)
    (row,) = [r for r in FeedbackStore(served_home).rows() if r["id"] == item]
    assert row["categories"] == ["hallucination"]
    export_feedback([row], "sft", tmp_path / "export")
    (exported,) = read_jsonl(tmp_path / "export" / "sft.jsonl")
    assert exported["output"] == "구청 1층 민원실에서 살 수 있습니다."


def test_review_by_keyboard_alone(page, served_home):
    import httpx

    from kollm.feedback.store import FeedbackStore

    headers = {"authorization": "Bearer viewer-key"}
    ids = []
    for question in ("민원서류 발급 시간은?", "분실물은 어디서 찾나요?"):
        body = {
            "model": "tiny",
            "max_tokens": 4,
            "messages": [{"role": "user", "content": question}],
        }
        rid = httpx.post(page.base + "/v1/chat/completions", json=body, headers=headers).json()
        rated = {"response_id": rid["id"], "rating": "bad", "categories": ["evasive"]}
        ids.append(httpx.post(page.base + "/v1/feedback", json=rated, headers=headers).json()["id"])
    _login(page, "admin-key")
    page.goto(page.base + "/ui/feedback")
    # newest first: j moves from the second rating to the first one asked
    page.keyboard.press("j")
    assert page.evaluate("document.activeElement.id") == f"feedback-{ids[0]}"
    page.keyboard.press("1")  # hallucination
    page.keyboard.press("4")  # evasive off
    page.keyboard.press("c")
    page.keyboard.type("평일 9시부터 18시까지 발급합니다.")
    page.keyboard.press("Escape")
    with page.expect_navigation():
        page.keyboard.press("s")
    (row,) = [r for r in FeedbackStore(served_home).rows() if r["id"] == ids[0]]
    assert row["categories"] == ["hallucination"]
    assert row["correction"] == "평일 9시부터 18시까지 발급합니다."


def test_pick_the_best_candidate_with_a_key(page, tmp_path):
    from tests.conftest import read_jsonl, write_jsonl

    pending = tmp_path / "runs" / "synth-demo" / "synth" / "pending_review.jsonl"
    pending.parent.mkdir(parents=True)
    rows = [
        {"prompt": f"질문 {i}", "answers": [f"답 {i}-가", f"답 {i}-나"], "wins": [1.0, 1.0]}
        for i in range(2)
    ]
    write_jsonl(pending, rows)
    _login(page, "admin-key")
    page.goto(page.base + "/ui/candidates")
    page.keyboard.press("j")
    page.keyboard.press("2")
    page.wait_for_selector("li.picked")
    page.screenshot(path=str(page.shots / "candidates.png"), full_page=True)
    (pair,) = read_jsonl(pending.parent / "reviewed_pairs.jsonl")
    assert pair == {**pair, "prompt": "질문 1", "chosen": "답 1-나", "rejected": "답 1-가"}


def test_loop_history_and_a_job_log_arriving_live(page, served_home, tmp_path):
    import sqlite3

    from kollm.cluster.jobs import LocalExecutor

    with sqlite3.connect(served_home / "registry.db") as conn:
        conn.execute(
            "INSERT INTO loop_decisions (at, model, alias, trigger, production_version,"
            " candidate_version, decision, metrics) VALUES (?,?,?,?,?,?,?,?)",
            (
                "2026-12-01T09:00:00",
                "tiny",
                "production",
                "bad share 0.45 >= 0.3",
                1,
                2,
                "promoted",
                json.dumps({"candidate": {"score": 58.1}, "production": {"score": 57.4}}),
            ),
        )
    _run = tmp_path / "runs" / "kollm-demo-2" / "eval"
    _run.mkdir(parents=True)
    (_run / "stage.json").write_text(json.dumps({"summary": "eval done"}))
    (_run / "metrics.json").write_text(json.dumps({"model": {"score": 58.1, "rouge1": 0.63}}))
    jobs = LocalExecutor(served_home)
    job = jobs.record("train", ["kollm", "train", "recipes/demo.yaml"], "local", {"cpus": 2})
    jobs.update(job, status="running")
    log = served_home / "jobs" / f"{job}.log"
    log.write_text("train: step 1/40 loss 3.21\n")
    _login(page, "viewer-key")
    page.goto(page.base + "/ui/loop")
    assert "promoted" in page.inner_text("#decisions") and "58.100" in page.inner_text("#decisions")
    page.screenshot(path=str(page.shots / "loop.png"), full_page=True)
    page.goto(page.base + "/ui/compare?a=kollm-demo&b=kollm-demo-2")
    assert "+0.640" in page.inner_text("#compare-metrics")
    page.screenshot(path=str(page.shots / "compare.png"), full_page=True)
    page.goto(page.base + f"/ui/jobs/{job}")
    page.wait_for_function("document.getElementById('job-log').textContent.includes('step 1/40')")
    with log.open("a") as out:
        out.write("train: step 2/40 loss 2.87\n")
    page.wait_for_function("document.getElementById('job-log').textContent.includes('step 2/40')")
    jobs.update(job, status="succeeded", exit_code=0)
    page.wait_for_function("document.getElementById('job-status').textContent == 'succeeded'")
    page.screenshot(path=str(page.shots / "job.png"), full_page=True)
