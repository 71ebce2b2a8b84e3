"""The console's operations screens over HTTP: the loop's decisions with their numbers, jobs
with a live log over SSE, two runs side by side, a reviewer's pick among candidate answers
written as a DPO pair, the queue's filters, and a key file with roles and names."""

from __future__ import annotations

import json
import threading
import time
from contextlib import closing

import httpx
import pytest

from kollm.store import connect
from tests.conftest import read_jsonl, write_jsonl
from tests.serve.test_console import page_token

# every test runs on SQLite and on PostgreSQL (tests/postgres.py)
pytestmark = pytest.mark.usefixtures("store_backend")


def _login(server, key):
    client = httpx.Client(base_url=server.base_url, follow_redirects=True, timeout=30)
    token = _csrf(client.get("/ui/login").text)  # the login form's token (with its cookie)
    page = client.post("/ui/login", data={"key": key, "csrf": token})
    assert page.status_code == 200
    client.headers["x-csrf-token"] = page_token(page.text)  # as the playground sends it
    return client


def _csrf(html):
    import re

    return re.search(r'name="csrf" value="([0-9a-f]+)"', html).group(1)


def _run(root, name, score, rouge):
    (root / name / "eval").mkdir(parents=True)
    (root / name / "eval" / "stage.json").write_text(json.dumps({"summary": {"score": score}}))
    metrics = {"model": {"score": score, "rougeL": rouge}}
    (root / name / "eval" / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    _run(root, "base", 50.0, 0.50)
    _run(root, "tuned", 57.5, 0.60)
    return root


@pytest.fixture
def server(start_server, runs):
    return start_server(api_keys=("viewer-key",), admin_keys=("admin-key",), runs_dir=runs)


def test_two_runs_side_by_side_show_each_metric_and_its_change(server):
    page = _login(server, "viewer-key").get("/ui/compare?a=base&b=tuned").text
    table = page[page.index('id="compare-metrics"') :]
    assert "50.000" in table and "57.500" in table and "+7.500" in table and "+0.100" in table


def test_the_loop_page_lists_each_decision_with_its_numbers(server, served_home):
    with closing(connect(served_home / "registry.db")) as conn:
        for at, decision, win in (
            ("2026-11-30", "rejected", 0.41),
            ("2026-12-01", "promoted", 0.62),
        ):
            conn.execute(
                "INSERT INTO loop_decisions (at, model, alias, trigger, production_version,"
                " candidate_version, decision, metrics) VALUES (?,?,?,?,?,?,?,?)",
                (
                    at,
                    "tiny",
                    "production",
                    "bad share 0.4",
                    1,
                    2,
                    decision,
                    json.dumps({"judge": {"win_rate": win}}),
                ),
            )
    page = _login(server, "viewer-key").get("/ui/loop").text
    rows = page[page.index('id="decisions"') :]
    assert rows.index("promoted") < rows.index("rejected")  # newest first
    assert "win_rate 0.620" in rows and "bad share 0.4" in rows


def test_a_job_log_streams_until_the_job_ends(server, served_home):
    from kollm.cluster.jobs import LocalExecutor

    jobs = LocalExecutor(served_home)
    job_id = jobs.record("train", ["kollm", "train", "r.yaml"], "local", {"gpus": 0})
    jobs.update(job_id, status="running")
    log = served_home / "jobs" / f"{job_id}.log"
    log.write_text("step 1 loss 2.10\n")
    client = _login(server, "viewer-key")
    assert "train" in client.get("/ui/jobs").text
    assert f'data-src="/ui/jobs/{job_id}/log"' in client.get(f"/ui/jobs/{job_id}").text

    def finish():
        time.sleep(0.6)
        log.write_text("step 1 loss 2.10\nstep 2 loss 1.80\n")
        time.sleep(0.6)
        jobs.update(job_id, status="succeeded", exit_code=0)

    threading.Thread(target=finish).start()
    events = []
    with client.stream("GET", f"/ui/jobs/{job_id}/log?poll_s=0.1") as stream:
        for line in stream.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    assert events == ["step 1 loss 2.10\n", "step 2 loss 1.80\n", "succeeded"]
    assert client.get("/ui/jobs/999/log").status_code == 404


def _pending(runs):
    rows = [
        {
            "prompt": "여권 재발급은 어디서 하나요?",
            "answers": [
                "구청 민원실에서 합니다.",
                "모릅니다.",
                "구청 민원실 또는 정부24에서 신청합니다.",
            ],
            "models": ["a", "b", "c"],
            "wins": [1.0, 0.5, 1.5],
            "review": "pending",
        },
        {
            "prompt": "전입신고 기한은?",
            "answers": ["14일 이내입니다.", "한 달입니다."],
            "models": ["a", "b"],
            "wins": [1.0, 1.0],
            "review": "pending",
        },
    ]
    path = runs / "synth-demo" / "synth" / "pending_review.jsonl"
    path.parent.mkdir(parents=True)
    write_jsonl(path, rows)
    return path


def test_a_pick_among_candidates_becomes_a_preference_pair(server, runs, served_home):
    pending = _pending(runs)
    admin = _login(server, "admin-key")
    page = admin.get("/ui/candidates").text
    assert "여권 재발급은" in page and "정부24" in page
    from kollm.data.io import read_records
    from kollm.data.records import KINDS
    from kollm.feedback.picks import prompt_sha

    first = prompt_sha("여권 재발급은 어디서 하나요?")
    token = _csrf(page)
    done = admin.post(
        "/ui/candidates/pick",
        data={
            "file": "synth-demo/synth/pending_review.jsonl",
            "sha": first,
            "picked": 2,
            "csrf": token,
        },
    )
    assert done.status_code == 200 and "선택됨 3" in done.text
    (pair,) = read_jsonl(pending.parent / "reviewed_pairs.jsonl")
    assert pair["chosen"] == "구청 민원실 또는 정부24에서 신청합니다."
    assert pair["rejected"] == "모릅니다." and pair["rejected_model"] == "b"
    assert pair["reviewer"].startswith("key-")
    assert len(list(read_records(pending.parent / "reviewed_pairs.jsonl", KINDS["preference"])))
    wrong = admin.post(
        "/ui/candidates/pick",
        data={
            "file": "synth-demo/synth/pending_review.jsonl",
            "sha": first,
            "picked": 7,
            "csrf": token,
        },
    )
    assert wrong.status_code == 400 and "answer 7" in wrong.text
    viewer = _login(server, "viewer-key")
    assert "선택 1" not in viewer.get("/ui/candidates").text
    refused = viewer.post("/ui/candidates/pick", data={"file": "x", "sha": first, "picked": 0})
    assert refused.status_code == 403


def test_the_queue_filters_by_version_and_date(server, served_home):
    client = _login(server, "viewer-key")
    rid = client.post(
        "/v1/chat/completions",
        json={
            "model": "tiny",
            "messages": [{"role": "user", "content": "주차 등록은?"}],
            "max_tokens": 2,
        },
    ).json()["id"]
    client.post("/v1/feedback", json={"response_id": rid, "rating": "bad"})
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert "주차 등록은?" in client.get(f"/ui/feedback?since={today}&until={today}").text
    assert "주차 등록은?" not in client.get("/ui/feedback?until=2020-01-01").text
    assert "주차 등록은?" not in client.get("/ui/feedback?model=other:9").text
    assert "주차 등록은?" in client.get("/ui/feedback?model=tiny:1").text


def test_a_key_file_gives_roles_and_the_audit_log_names(start_server, tmp_path, served_home):
    from kollm.serve.keys import KeyFileError, read_key_file

    path = tmp_path / "keys.txt"
    path.write_text("# key role name\nk-view\nk-admin admin 김검토 주무관\n")
    path.chmod(0o600)  # a key file others can read is refused
    keys = read_key_file(path)
    assert keys.api_keys == ["k-view", "k-admin"] and keys.admin_keys == ["k-admin"]
    assert keys.names == {"k-admin": "김검토 주무관"}
    path.write_text("k-view\nk-2 owner\n")
    with pytest.raises(KeyFileError, match=r"keys.txt:2: role 'owner'"):
        read_key_file(path)
    server = start_server(api_keys=keys.api_keys, admin_keys=keys.admin_keys, key_names=keys.names)
    admin = _login(server, "k-admin")
    token = _csrf(admin.get("/ui/registry").text)
    admin.post("/ui/registry/promote", data={"name": "tiny", "version": 1, "csrf": token})
    with closing(connect(served_home / "registry.db")) as conn:
        (who,) = conn.execute("SELECT key_name FROM audit_log ORDER BY id DESC").fetchone()
    assert who == "김검토 주무관"
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "안녕"}], "max_tokens": 2}
    answered = httpx.post(
        server.base_url + "/v1/chat/completions",
        json=chat,
        headers={"authorization": "Bearer k-admin"},
        timeout=30,
    )
    assert answered.status_code == 200  # an admin key calls the API too


def test_kollm_serve_refuses_a_bad_key_file(tmp_path):
    from typer.testing import CliRunner

    from kollm.cli import app

    path = tmp_path / "keys.txt"
    path.write_text("k1 superuser\n")
    path.chmod(0o600)
    result = CliRunner().invoke(app, ["ui", "--api-key-file", str(path)])
    assert result.exit_code != 0 and "keys.txt:1: role 'superuser'" in result.output


def _bytes_read() -> int:
    """What this process has read through read(2) and its kin (files, not sockets' recv)."""
    with open("/proc/self/io") as io:
        return int(next(line for line in io if line.startswith("rchar:")).split()[1])


def test_a_job_log_stream_with_poll_0_neither_spins_nor_rereads_the_log(
    server, served_home, monkeypatch
):
    from kollm.cluster.jobs import LocalExecutor
    from kollm.jobtable import JobTable

    jobs = LocalExecutor(served_home)
    job_id = jobs.record("train", ["kollm", "train", "r.yaml"], "local", {"gpus": 0})
    jobs.update(job_id, status="running")
    log = served_home / "jobs" / f"{job_id}.log"
    big = "step 0 loss 9.99 " * 250_000 + "\n"  # 4 MiB already written
    log.write_text(big)
    polls = []
    real_get = JobTable.get
    monkeypatch.setattr(JobTable, "get", lambda *a: polls.append(1) or real_get(*a))

    def finish():
        for step in (1, 2, 3):
            time.sleep(0.3)
            with log.open("a") as out:
                out.write(f"step {step} loss 1.5\n")
        time.sleep(0.3)
        jobs.update(job_id, status="succeeded", exit_code=0)

    client = _login(server, "viewer-key")
    threading.Thread(target=finish).start()
    before = _bytes_read()
    events = []
    with client.stream("GET", f"/ui/jobs/{job_id}/log?poll_s=0") as stream:
        for line in stream.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    read = _bytes_read() - before
    assert "".join(events[:-1]) == log.read_text() and events[-1] == "succeeded"
    assert len(polls) < 30  # about 1.2 s at the 0.2-s floor, not a busy loop
    assert read < 2 * len(big)  # the 4 MiB once, then only what was appended
