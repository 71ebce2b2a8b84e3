import json
import multiprocessing as mp
from contextlib import closing

import httpx
import pytest
from typer.testing import CliRunner

from kollm.cli import app
from kollm.feedback.export import export_feedback
from kollm.feedback.store import FeedbackError, FeedbackStore, parse_rating
from kollm.store import connect

# every test runs on SQLite and on PostgreSQL (tests/postgres.py)
pytestmark = pytest.mark.usefixtures("store_backend")


def log_response(
    home, rid: str, user: str = "치과 예약하고 싶어요", answer: str = "네, 예약했습니다."
) -> None:
    from kollm.feedback.responses import RequestLog

    request = {"model": "tiny", "messages": [{"role": "user", "content": user}]}
    RequestLog(home).write(rid, "chat", "tiny", "tiny:1", request, answer, 5, 4, "stop", 10.0)


def test_ratings_parse_and_unknowns_are_named(tmp_path):
    assert parse_rating("good").is_good and not parse_rating("bad").is_good
    assert parse_rating(4).is_good and not parse_rating("2").is_good
    with pytest.raises(FeedbackError, match="rating"):
        parse_rating(7)
    store = FeedbackStore(tmp_path)
    with pytest.raises(FeedbackError, match="no logged response 'nope'") as err:
        store.add("nope", "good")
    assert err.value.status == 404
    log_response(tmp_path, "r1")
    with pytest.raises(FeedbackError, match=r"categories: unknown \['rude'\]"):
        store.add("r1", "bad", ["rude"])


def test_feedback_through_the_server(start_server, served_home):
    server = start_server()
    chat = httpx.post(
        server.base_url + "/v1/chat/completions",
        json={"model": "tiny", "messages": [{"role": "user", "content": "안녕"}], "max_tokens": 4},
    )
    rid = chat.json()["id"]
    ok = httpx.post(
        server.base_url + "/v1/feedback",
        json={
            "response_id": rid,
            "rating": "bad",
            "categories": ["hallucination"],
            "correction": "연락처는 010-1234-5678입니다.",
        },
    )
    assert ok.status_code == 200 and ok.json()["model_version"] == "tiny:1"
    missing = httpx.post(
        server.base_url + "/v1/feedback", json={"response_id": "chatcmpl-x", "rating": 1}
    )
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "response_id"
    bad = httpx.post(
        server.base_url + "/v1/feedback",
        json={"response_id": rid, "rating": "good", "categories": ["boring"]},
    )
    assert bad.status_code == 400 and "boring" in bad.json()["error"]["message"]
    (row,) = [r for r in FeedbackStore(served_home).rows("tiny") if r["response_id"] == rid]
    assert row["correction"] == "연락처는 #PhoneNumber#입니다."  # masked on the way in


def test_stats_json_and_exports(tmp_path, monkeypatch):
    monkeypatch.setenv("KOLLM_HOME", str(tmp_path))
    questions = [
        "주민등록등본은 어디서 떼나요?",
        "여권 M12345678을 잃어버렸는데 분실 신고는 어떻게 하나요?",
        "전입신고 기한이 언제까지인가요?",
        "자동차세 납부 기한을 알려 주세요.",
    ]
    for i, question in enumerate(questions):
        log_response(tmp_path, f"r{i}", user=question)
    store = FeedbackStore(tmp_path)
    store.add("r0", "good")
    store.add("r1", "bad", ["hallucination"], correction="여권 분실은 가까운 구청에 신고합니다.")
    store.add("r2", 2, ["evasive", "other"], correction="여권 분실은 가까운 구청에 신고합니다.")
    store.add("r1", "bad", correction="여권 분실은 가까운 구청에 신고합니다.")  # same pair again
    store.add("r3", 5)
    runner = CliRunner()
    result = runner.invoke(app, ["feedback", "stats", "--json"])
    stats = json.loads(result.output)
    assert (
        stats["total"] == 5 and stats["bad"] == 3 and stats["categories"]["evasive"]["count"] == 1
    )
    assert stats["versions"]["tiny:1"]["bad_rate"] == 0.6
    assert (
        runner.invoke(app, ["feedback", "stats", "--png", str(tmp_path / "s.png")]).exit_code == 0
    )
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"

    rows = store.rows()
    dpo = export_feedback(rows, "dpo", tmp_path / "dpo")
    pairs = [json.loads(x) for x in (tmp_path / "dpo" / "dpo.jsonl").read_text().splitlines()]
    assert dpo["rows"] == len(pairs) == 2 and dpo["dropped"]["exact_dedup"] == 1
    assert (
        pairs[0]["chosen"].startswith("여권 분실은") and pairs[0]["rejected"] == "네, 예약했습니다."
    )
    assert "M12345678" not in pairs[0]["prompt"] and "#PassportNumber#" in pairs[0]["prompt"]
    sft = export_feedback(rows, "sft", tmp_path / "sft", kind="dialogue_summary")
    assert sft["rows"] == 2 and set(
        json.loads((tmp_path / "sft" / "sft.jsonl").read_text().splitlines()[0])
    ) >= {"dialogue", "summary"}
    export_feedback(rows, "kto", tmp_path / "kto")
    labels = [
        json.loads(x)["label"] for x in (tmp_path / "kto" / "kto.jsonl").read_text().splitlines()
    ]
    assert labels.count(False) == 2 and labels.count(True) >= 3
    assert len(dpo["sha256"]) == 64


def _add_many(home: str, count: int) -> None:
    store = FeedbackStore(home)
    for _ in range(count):
        store.add("shared", "bad", ["other"])


def test_concurrent_feedback_from_several_processes_all_lands(tmp_path):
    log_response(tmp_path, "shared")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_add_many, args=(str(tmp_path), 10)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    with closing(connect(tmp_path / "registry.db")) as conn:
        assert conn.execute("SELECT COUNT(*) FROM feedback").fetchone()[0] == 40


def test_exports_keep_the_whole_conversation_of_a_multi_turn_answer(tmp_path):
    from kollm.feedback.responses import RequestLog

    turns = [
        {"role": "system", "content": "구청 민원 상담원입니다."},
        {
            "role": "user",
            "content": "마포구 주민인데 전입신고 하려고요. 제 번호는 010-1234-5678이에요.",
        },
        {"role": "assistant", "content": "네, 마포구 전입신고 안내해 드리겠습니다."},
        {"role": "user", "content": "어디로 가면 되나요?"},
    ]
    request = {"model": "tiny", "messages": turns}
    RequestLog(tmp_path).write(
        "m1", "chat", "tiny", "tiny:1", request, "모릅니다.", 9, 2, "stop", 1
    )
    FeedbackStore(tmp_path).add("m1", "bad", correction="마포구청 민원여권과로 가시면 됩니다.")
    rows = FeedbackStore(tmp_path).rows()

    export_feedback(rows, "dpo", tmp_path / "dpo")
    (pair,) = [json.loads(x) for x in (tmp_path / "dpo" / "dpo.jsonl").read_text().splitlines()]
    assert [m["role"] for m in pair["messages"]] == ["system", "user", "assistant", "user"]
    assert pair["messages"][1]["content"].startswith("마포구 주민인데 전입신고")
    assert "#PhoneNumber#" in pair["messages"][1]["content"]  # masked like every other field
    assert pair["prompt"] == "어디로 가면 되나요?" and pair["rejected"] == "모릅니다."

    export_feedback(rows, "sft", tmp_path / "sft", kind="chat")
    (chat,) = [json.loads(x) for x in (tmp_path / "sft" / "sft.jsonl").read_text().splitlines()]
    assert chat["messages"][:3] == pair["messages"][:3]
    assert chat["messages"][-1] == {
        "role": "assistant",
        "content": "마포구청 민원여권과로 가시면 됩니다.",
    }

    export_feedback(rows, "kto", tmp_path / "kto")
    kto = [json.loads(x) for x in (tmp_path / "kto" / "kto.jsonl").read_text().splitlines()]
    assert all(len(r["messages"]) == 4 for r in kto)


def test_an_answer_of_a_task_service_trains_on_the_prompt_the_task_built(tmp_path):
    from kollm.feedback.responses import RequestLog
    from kollm.tasks import SHIPPED, task_layers

    request = {
        "model": "tiny",
        "task": "summarise",
        "messages": [{"role": "user", "content": "긴 글"}],
    }
    RequestLog(tmp_path).write("m1", "chat", "tiny", "tiny:1", request, "글.", 9, 2, "stop", 1)
    FeedbackStore(tmp_path).add("m1", "bad", correction="짧은 요약입니다.")
    rows = FeedbackStore(tmp_path).rows()

    export_feedback(rows, "sft", tmp_path / "sft", kind="chat", tasks=task_layers())
    (chat,) = [json.loads(x) for x in (tmp_path / "sft" / "sft.jsonl").read_text().splitlines()]
    task = SHIPPED["summarise"]
    assert chat["messages"][0] == {"role": "system", "content": task.system}
    assert chat["messages"][1]["content"] == task.template.format(input="긴 글")
    # without the services it was served under, the turns stay as the user sent them
    export_feedback(rows, "sft", tmp_path / "plain", kind="chat")
    (plain,) = [json.loads(x) for x in (tmp_path / "plain" / "sft.jsonl").read_text().splitlines()]
    assert plain["messages"][0] == {"role": "user", "content": "긴 글"}
