"""Synthesis through an endpoint, against a deterministic fake: each step end to end, the
ROUGE-L filter on near-identical Korean instructions, placeholders through back-translation,
the cache on rerun, resume after kill -9 without repeating answered calls, and preference
pairs the dpo method trains on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from kollm.cli import app
from tests.conftest import fake_api, read_jsonl, write_jsonl

HERE = Path(__file__).resolve().parent


@pytest.fixture
def endpoint(monkeypatch, tmp_path):
    from tests.synth import fake_endpoint

    yield from fake_api(fake_endpoint.app, monkeypatch, tmp_path)


def _recipe(tmp_path, url, tasks, **synth):
    body = {
        "name": "syn",
        "output_dir": str(tmp_path / "runs" / "{name}"),
        "synth": {"endpoint": {"url": url, "model": "fake"}, "tasks": tasks, **synth},
    }
    path = tmp_path / "synth.yaml"
    path.write_text(yaml.safe_dump(body, allow_unicode=True), encoding="utf-8")
    return path


def _invoke(*args):
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result


def test_translate_then_answer_keeps_placeholders_and_code_and_writes_lineage(endpoint, tmp_path):
    url, _ = endpoint
    english = write_jsonl(
        tmp_path / "alpaca.jsonl",
        [
            {"instruction": "Greet #Person1# politely.", "input": "", "output": ""},
            {"instruction": "Explain `len(x)` in Python.", "input": "", "output": ""},
            {"instruction": "LOSE the #Person2# token", "input": "", "output": ""},
            {"instruction": "Call me at 010-1234-5678.", "input": "", "output": ""},
        ],
    )
    tasks = [{"task": "translate", "input": str(english)}, {"task": "answer"}]
    _invoke("synth", str(_recipe(tmp_path, url, tasks)))
    out = tmp_path / "runs" / "syn" / "synth"
    rows = read_jsonl(out / "output.jsonl")
    assert [r["instruction"] for r in rows[:2]] == [
        "[ko] Greet #Person1# politely.",
        "[ko] Explain `len(x)` in Python.",
    ]
    assert rows[0]["output"].startswith("정답 답변: [ko] Greet #Person1#")
    assert "010-1234-5678" not in json.dumps(
        rows, ensure_ascii=False
    )  # the data stage's PII masker ran
    manifest = json.loads((out / "manifest.json").read_text())
    translate, answer = manifest["steps"]
    assert translate["dropped"] == 1 and translate["reasons"] == {"placeholder_lost": 1}
    assert answer["kept"] == 3 and manifest["records"] == 3 and manifest["kind"] == "instruction"
    assert manifest["endpoint"]["model"] == "fake" and len(translate["template_sha"]) == 16
    assert manifest["usage"]["calls"] == 7 and manifest["usage"]["by_step"]["answer"]["calls"] == 3
    assert len(manifest["sha256"]) == 64


def test_self_instruct_rejects_near_identical_korean_instructions(endpoint, tmp_path):
    url, _ = endpoint
    seeds = write_jsonl(
        tmp_path / "seeds.jsonl", [{"instruction": "다음 문장을 존댓말로 바꾸세요."}]
    )
    tasks = [{"task": "self_instruct", "input": str(seeds)}, {"task": "evolve"}]
    _invoke("synth", str(_recipe(tmp_path, url, tasks, clean=False)))
    out = tmp_path / "runs" / "syn" / "synth"
    made = read_jsonl(out / "0_self_instruct.jsonl")
    assert [r["instruction"] for r in made] == [
        "서울의 관광지를 세 곳 추천하세요.",
        "사과와 배의 차이를 설명하세요.",
    ]
    stats = json.loads((out / "manifest.json").read_text())["steps"][0]
    assert stats["reasons"] == {"too_similar": 3}  # the seed's twin, its paraphrase, 3's paraphrase
    evolved = read_jsonl(out / "1_evolve.jsonl")
    assert evolved[0] == {
        "instruction": "(심화) 서울의 관광지를 세 곳 추천하세요.",
        "input": "",
        "output": "",
        "evolved_from": "서울의 관광지를 세 곳 추천하세요.",
        "evolution": evolved[0]["evolution"],
    }


def test_doc_qa_keeps_the_source_chunks(endpoint, tmp_path):
    from kollm.rag.index import RagIndex

    url, _ = endpoint
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("전입신고는 14일 안에 합니다. 주민센터에서 합니다.", "utf-8")
    (docs / "b.txt").write_text("여권은 구청에서 발급합니다.", "utf-8")
    index = RagIndex(tmp_path / "home")
    index.index_paths("civil", [docs])
    _invoke("synth", str(_recipe(tmp_path, url, [{"task": "doc_qa", "collection": "civil"}])))
    rows = read_jsonl(tmp_path / "runs" / "syn" / "synth" / "output.jsonl")
    ids = {h.chunk_id: h.doc_id for q in ("전입신고", "여권") for h in index.search("civil", q, 5)}
    assert len(rows) == 2 and all(ids[r["sources"][0]] == r["doc_id"] for r in rows)
    assert rows[0]["output"] == "전입신고는 14일 안에 합니다."


def test_back_translation_keeps_placeholders_and_a_rerun_is_all_cache(endpoint, tmp_path):
    url, state = endpoint
    dialogues = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {
                "id": "d1",
                "dialogue": "#Person1#: 택배은 언제 와요?\n#Person2#: #PhoneNumber#로 연락해요.",
            }
        ],
    )
    out = tmp_path / "bt.jsonl"
    args = [
        "synth",
        "back-translate",
        str(dialogues),
        "-o",
        str(out),
        "--endpoint",
        url,
        "--model",
        "fake",
        "--field",
        "dialogue",
    ]
    _invoke(*args)
    (row,) = read_jsonl(out)
    assert row["dialogue"] == "#Person1#: 택배는 언제 와요?\n#Person2#: #PhoneNumber#로 연락해요."
    assert row["id"] == "d1-bt" and row["augmented_from"] == "d1"
    calls = state.calls
    result = _invoke(*args)
    assert state.calls == calls and "cache hits 2" in result.output
    manifest = json.loads(out.with_name("bt.jsonl.manifest.json").read_text())
    assert manifest["usage"]["cache_hits"] == 2 and manifest["records"] == 1


def test_preference_pairs_are_judged_and_train_with_dpo(
    endpoint, tmp_path, tiny_recipe, local_base
):
    from kollm.config import load_recipe
    from kollm.train.dpo import train_dpo

    url, _ = endpoint
    prompts = write_jsonl(
        tmp_path / "p.jsonl",
        [{"instruction": "수도는 어디인가요?"}, {"instruction": "1 더하기 1은?"}],
    )
    _invoke(
        "synth",
        str(_recipe(tmp_path, url, [{"task": "preference", "input": str(prompts), "n": 3}])),
    )
    rows = read_jsonl(tmp_path / "runs" / "syn" / "synth" / "output.jsonl")
    assert len(rows) == 2 and all(r["chosen"].startswith("정답 답변") for r in rows)
    assert all(r["rejected"].startswith("모르겠어요") and r["review"] == "judged" for r in rows)
    recipe = load_recipe(tiny_recipe, ["train.max_steps=2", "train.method=dpo"])
    result = train_dpo(recipe, rows, local_base)
    assert Path(result.model_dir).exists()


def test_a_killed_run_resumes_repeating_only_calls_in_flight(tmp_path):
    from kollm.pipeline.serving import free_port

    port = free_port()
    upstream = subprocess.Popen([sys.executable, str(HERE / "fake_endpoint.py"), str(port), "0.3"])
    env = {**os.environ, "KOLLM_HOME": str(tmp_path / "home")}
    try:
        for _ in range(100):
            try:
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        rows = write_jsonl(tmp_path / "q.jsonl", [{"instruction": f"질문 {i}"} for i in range(16)])
        command = [
            sys.executable,
            "-m",
            "kollm",
            "synth",
            "answer",
            str(rows),
            "-o",
            str(tmp_path / "a.jsonl"),
            "--endpoint",
            f"http://127.0.0.1:{port}/v1",
            "--model",
            "fake",
            "--concurrency",
            "2",
        ]
        first = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 60
        while httpx.get(f"http://127.0.0.1:{port}/calls").json()["calls"] < 6:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait()
        before = httpx.get(f"http://127.0.0.1:{port}/calls").json()["calls"]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        total = httpx.get(f"http://127.0.0.1:{port}/calls").json()["calls"]
        assert len(read_jsonl(tmp_path / "a.jsonl")) == 16
        assert 16 <= total <= 16 + 2  # at most the two calls in flight at the kill were repeated
        assert before >= 6
    finally:
        upstream.kill()


def test_answers_from_kollms_own_server(start_server, tmp_path, monkeypatch):
    server = start_server()
    monkeypatch.setenv("KOLLM_HOME", str(tmp_path / "synth-home"))
    rows = write_jsonl(
        tmp_path / "i.jsonl",
        [{"instruction": "인사말을 써 주세요."}, {"instruction": "요약해 주세요."}],
    )
    out = tmp_path / "o.jsonl"
    _invoke(
        "synth",
        "answer",
        str(rows),
        "-o",
        str(out),
        "--endpoint",
        server.base_url + "/v1",
        "--model",
        "tiny",
        "--max-tokens",
        "16",
    )
    made = read_jsonl(out)
    assert len(made) <= 2 and all(r["output"] for r in made)
    manifest = json.loads(out.with_name("o.jsonl.manifest.json").read_text())
    assert manifest["usage"]["calls"] == 2 and manifest["usage"]["completion_tokens"] > 0
    assert manifest["steps"][0]["seen"] == 2
    # kollm serve on CTranslate2 refuses a seeded sample (it could not repeat it): synth
    # asked again without the seed, and its lineage says the seed was not honoured
    assert manifest["seed_honoured"] is False


def test_preference_answers_can_come_from_several_models(endpoint, tmp_path):
    url, _ = endpoint
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"instruction": "수도는 어디인가요?"}])
    sources = [{"url": url, "model": "strong"}, {"url": url, "model": "weak"}]
    task = {"task": "preference", "input": str(prompts), "n": 2, "sources": sources}
    _invoke("synth", str(_recipe(tmp_path, url, [task])))
    (row,) = read_jsonl(tmp_path / "runs" / "syn" / "synth" / "output.jsonl")
    assert (row["chosen_model"], row["rejected_model"]) == ("strong", "weak")
    assert row["rejected"] == "모르겠어요" and row["review"] == "judged"
