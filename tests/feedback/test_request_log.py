"""The request log stays bounded: a row keeps at most `log_max_kb` of a request and of its
answer (with the originals' sizes), and answers nobody rated go after `log_retention_days`."""

from __future__ import annotations

import datetime as dt
import json
from contextlib import closing

import pytest

from kollm.feedback.export import export_feedback
from kollm.feedback.responses import RequestLog
from kollm.feedback.store import FeedbackStore
from kollm.store import connect

# every test runs on SQLite and on PostgreSQL (tests/postgres.py)
pytestmark = pytest.mark.usefixtures("store_backend")


def _write(log: RequestLog, rid: str, request: dict, answer: str = "답변입니다.") -> None:
    log.write(rid, "chat", "tiny", "tiny:1", request, answer, 10, 3, "stop", 12.5)


def _row(home, rid: str):
    with closing(connect(home / "registry.db")) as conn:
        return conn.execute("SELECT * FROM responses WHERE id = ?", (rid,)).fetchone()


def test_a_request_of_200000_messages_is_kept_capped_as_a_request_the_export_reads(tmp_path):
    messages = [{"role": "system", "content": "공공기관 민원 상담원입니다."}]
    messages += [
        {"role": "user" if i % 2 else "assistant", "content": f"{i}번째 말: 연락처 010-1234-5678"}
        for i in range(200_000)
    ]
    messages.append({"role": "user", "content": "마지막 질문: 여권 재발급은 어디서 하나요?"})
    request = {"model": "tiny", "messages": messages, "temperature": 0}
    original = len(json.dumps(request, ensure_ascii=False).encode())
    assert original > 5_000_000
    log = RequestLog(tmp_path, max_kb=64)
    _write(log, "chatcmpl-big", request)

    row = _row(tmp_path, "chatcmpl-big")
    assert len(row["request"].encode()) <= 64 * 1024
    kept = json.loads(row["request"])
    assert kept["_truncated"]["bytes"] == original == row["request_bytes"]
    assert kept["messages"][0] == messages[0]  # the system prompt
    assert kept["messages"][-1]["content"] == messages[-1]["content"]  # the question answered
    assert kept["_truncated"]["messages"] == len(messages) - len(kept["messages"])
    assert "010-1234-5678" not in row["request"]  # masked as ever

    store = FeedbackStore(tmp_path)
    store.add("chatcmpl-big", "bad", correction="주민센터나 구청 여권과에서 합니다.")
    manifest = export_feedback(store.rows(), "dpo", tmp_path / "out")
    pair = json.loads((tmp_path / "out" / "dpo.jsonl").read_text(encoding="utf-8"))
    assert manifest["rows"] == 1 and pair["prompt"] == messages[-1]["content"]


def test_one_huge_message_and_a_long_answer_are_cut_to_the_cap(tmp_path):
    log = RequestLog(tmp_path, max_kb=4)
    question = "가" * 50_000 + " 그래서 질문은 이것입니다"
    answer = "나" * 10_000
    _write(log, "chatcmpl-long", {"model": "tiny", "prompt": question}, answer)

    row = _row(tmp_path, "chatcmpl-long")
    kept = json.loads(row["request"])
    assert len(row["request"].encode()) <= 4096
    assert kept["prompt"].endswith("질문은 이것입니다")  # cut in the middle: both ends stay
    assert kept["_truncated"]["bytes"] == row["request_bytes"] > 150_000
    assert len(row["response"].encode()) <= 4096 and row["response"] == "나" * 1365
    assert row["response_bytes"] == 30_000


def test_a_request_under_the_cap_is_kept_whole(tmp_path):
    log = RequestLog(tmp_path, max_kb=64)
    request = {"model": "tiny", "messages": [{"role": "user", "content": "안녕하세요"}]}
    _write(log, "chatcmpl-small", request)
    row = _row(tmp_path, "chatcmpl-small")
    assert json.loads(row["request"]) == request
    assert row["request_bytes"] == len(row["request"].encode())


def _age(home, rid: str, days: int) -> None:
    when = (dt.datetime.now(dt.UTC) - dt.timedelta(days=days)).isoformat(timespec="milliseconds")
    with closing(connect(home / "registry.db")) as conn:
        conn.execute("UPDATE responses SET created_at = ? WHERE id = ?", (when, rid))


def _ids(home) -> set[str]:
    with closing(connect(home / "registry.db")) as conn:
        return {r[0] for r in conn.execute("SELECT id FROM responses")}


def test_retention_deletes_old_unrated_answers_at_start_and_keeps_rated_ones(tmp_path):
    log = RequestLog(tmp_path, retention_days=0)  # keep everything while the rows are made
    for rid in ("old", "old-rated", "recent"):
        _write(log, rid, {"model": "tiny", "messages": [{"role": "user", "content": rid}]})
    FeedbackStore(tmp_path).add("old-rated", "good")
    _age(tmp_path, "old", 31)
    _age(tmp_path, "old-rated", 31)
    _age(tmp_path, "recent", 29)
    assert log.prune() == 0 and _ids(tmp_path) == {"old", "old-rated", "recent"}

    RequestLog(tmp_path, retention_days=30)  # a server starting
    assert _ids(tmp_path) == {"old-rated", "recent"}
    assert len(FeedbackStore(tmp_path).rows()) == 1  # the rating and what it rates stay


def test_retention_runs_again_beside_the_writes(tmp_path, monkeypatch):
    from kollm.feedback import responses

    log = RequestLog(tmp_path, retention_days=7)
    _write(log, "a", {"model": "tiny", "prompt": "a"})
    _age(tmp_path, "a", 8)
    _write(log, "b", {"model": "tiny", "prompt": "b"})  # within the hour: no prune yet
    assert _ids(tmp_path) == {"a", "b"}
    monkeypatch.setattr(responses, "PRUNE_EVERY_S", 0.0)
    _write(log, "c", {"model": "tiny", "prompt": "c"})
    log.pruning.join(10)
    assert _ids(tmp_path) == {"b", "c"}


def test_the_serve_settings_reach_the_request_log(tmp_path):
    from kollm.config import ServeConfig
    from kollm.registry import Registry
    from kollm.serve.server import build_server

    defaults = ServeConfig()
    assert (defaults.log_max_kb, defaults.log_retention_days) == (64, 30)
    cfg = ServeConfig(models=[], log_max_kb=8, log_retention_days=0)
    app, _ = build_server(cfg, Registry(tmp_path))
    request_log = app.state.kollm.request_log
    assert (request_log.max_bytes, request_log.retention_days) == (8 * 1024, 0)


def test_nested_lists_and_a_forged_marker_cannot_get_past_the_cap(tmp_path):
    """Found in review: a list inside a message part was stored whole (3 MB against 64 KB),
    and a client's own `_truncated` field made the log write fail or forged the size."""
    part = {"type": "text", "text": "안녕하세요", "junk": [0] * 1_000_000}
    nested = {"model": "tiny", "messages": [{"role": "user", "content": [part]}]}
    forged = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "가" * 30_000}] * 3,
        "_truncated": {"messages": "x", "bytes": 1},
    }
    log = RequestLog(tmp_path, max_kb=64)
    _write(log, "nested", nested)
    _write(log, "forged", forged)
    for rid, request in (("nested", nested), ("forged", forged)):
        row = _row(tmp_path, rid)
        assert len(row["request"].encode()) <= 64 * 1024
        kept = json.loads(row["request"])
        assert kept["model"] == "tiny"
        size = len(
            json.dumps(
                {k: v for k, v in request.items() if k != "_truncated"}, ensure_ascii=False
            ).encode()
        )
        assert row["request_bytes"] == size and kept["_truncated"]["bytes"] == size
