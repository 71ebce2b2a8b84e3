"""Answers from documents over HTTP: the official openai client names a collection in
`extra_body`; the answer cites only retrieved chunks, a stream ends with its citations, a
question with no source gets the no-source answer, and the request log keeps the chunk ids."""

from __future__ import annotations

import json
import sqlite3

import httpx
import openai
import pytest

from kollm.config import RagConfig
from kollm.rag.index import RagIndex
from kollm.serve.retrieval import RagService

PASSAGES = {
    "moving.txt": "전입신고는 이사한 날부터 14일 안에 해야 합니다. 주민센터에서 합니다.",
    "passport.txt": "여권을 잃어버리면 구청 민원여권과에 분실 신고를 합니다.",
    "parking.txt": "거주자 우선 주차 신청은 매월 1일부터 5일까지 받습니다.",
}


@pytest.fixture(scope="module")
def collection(served_home, tmp_path_factory):
    root = tmp_path_factory.mktemp("ragdocs")
    for name, text in PASSAGES.items():
        (root / name).write_text(text, encoding="utf-8")
    RagIndex(served_home).index_paths("civil", [root])
    return "civil"


def _client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="none", max_retries=0)


def _ask(server, question: str, **extra):
    return _client(server).chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": question}],
        max_tokens=8,
        temperature=0,
        extra_body=extra,
    )


def test_answer_cites_only_retrieved_chunks(start_server, served_home, collection):
    server = start_server()
    question = "여권을 잃어버렸는데 분실 신고는 어디서 해요?"
    retrieved = {h.chunk_id for h in RagIndex(served_home).search(collection, question, 2)}
    answer = _ask(server, question, rag={"collection": collection, "top_k": 2})
    citations = answer.model_extra["citations"]
    assert citations and {c["chunk_id"] for c in citations} <= retrieved
    assert citations[0]["doc_id"] == "passport.txt"
    assert {"source", "page", "start", "end", "score", "index"} <= set(citations[0])
    row = (
        sqlite3.connect(served_home / "registry.db")
        .execute("SELECT rag FROM responses WHERE id = ?", (answer.id,))
        .fetchone()
    )
    logged = json.loads(row[0])
    assert logged["collection"] == collection and set(logged["chunks"]) <= retrieved
    assert logged["cited"] == [c["chunk_id"] for c in citations]


def test_plain_requests_carry_no_citations(start_server, collection):
    answer = _ask(start_server(), "안녕하세요")
    assert "citations" not in (answer.model_extra or {})


def test_a_stream_ends_with_its_citations(start_server, collection):
    stream = _client(start_server()).chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "거주자 우선 주차는 언제 신청받나요?"}],
        max_tokens=6,
        stream=True,
        extra_body={"rag": {"collection": collection}},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)  # the answer ended
    assert all("citations" not in (c.model_extra or {}) for c in chunks[:-1])
    assert chunks[-1].model_extra["citations"][0]["doc_id"] == "parking.txt"


def test_a_streamed_answer_from_documents_tokenises_its_prompt_once(
    start_server, collection, monkeypatch
):
    """The context prompt is tokenised once: the ids checked against the context are the ones
    the engine runs and the usage counts (fitting the chunks, the length check and the engine
    each tokenised it before)."""
    server = start_server()
    engine = server.manager.models["tiny"].engine
    tokenised, tokenize = [], engine.tokenize
    monkeypatch.setattr(engine, "tokenize", lambda text: tokenised.append(text) or tokenize(text))
    chunks = list(
        _client(server).chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": "거주자 우선 주차는 언제 신청받나요?"}],
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"rag": {"collection": collection}},
        )
    )
    assert len(tokenised) == 1 and "거주자 우선 주차 신청" in tokenised[0]  # with the context
    assert chunks[-1].usage.prompt_tokens == len(tokenize(tokenised[0]))
    assert chunks[-1].model_extra["citations"][0]["doc_id"] == "parking.txt"


def test_no_source_says_so_instead_of_guessing(start_server, served_home, collection):
    settings = RagConfig(min_score=0.5)
    server = start_server(rag=RagService(settings, collection, served_home))
    answer = _ask(server, "오늘 저녁 메뉴 추천해 줘")  # bound: no rag field needed
    assert answer.choices[0].message.content == settings.no_source
    assert answer.model_extra["citations"] == []
    metrics = httpx.get(server.base_url + "/metrics").text
    assert 'kollm:rag_no_source_total{model_name="tiny"} 1.0' in metrics
    bound = _ask(server, "전입신고는 며칠 안에 하나요?")  # and a question it can answer
    assert bound.model_extra["citations"][0]["doc_id"] == "moving.txt"


def test_a_streamed_no_source_answer_is_a_stream(start_server, served_home, collection):
    server = start_server(rag=RagService(RagConfig(min_score=0.5), collection, served_home))
    chunks = list(
        _client(server).chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": "날씨 어때?"}],
            stream=True,
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == RagConfig().no_source and chunks[-1].model_extra["citations"] == []


def test_unknown_collection_and_bad_rag_field_are_4xx(start_server, collection):
    server = start_server()
    with pytest.raises(openai.NotFoundError) as err:
        _ask(server, "전입신고", rag={"collection": "nope"})
    assert "nope" in str(err.value)
    for bad in ({"collection": collection, "top_k": 0}, {"collection": collection, "k": 2}):
        r = httpx.post(
            server.base_url + "/v1/chat/completions",
            json={"model": "tiny", "messages": [{"role": "user", "content": "x"}], "rag": bad},
        )
        assert 400 <= r.status_code < 500 and "rag" in r.text


def test_a_citation_of_an_hwp_file_names_its_section_paragraph_and_page(
    start_server, served_home, tmp_path
):
    from pathlib import Path

    public = Path(__file__).parents[1] / "rag" / "public"
    (tmp_path / "aligns.hwp").write_bytes((public / "pyhwp-aligns.hwp").read_bytes())
    RagIndex(served_home).index_paths("hwp", [tmp_path], max_chars=20)
    answer = _ask(start_server(), "bottom 10", rag={"collection": "hwp", "top_k": 1})
    (citation,) = answer.model_extra["citations"]
    # aligns.hwp holds a paragraph a page, paragraph n on page n - 1; the chunk cited opens
    # with "bottom 0", the 16th
    assert answer.model_extra["citations"]
    assert (citation["section"], citation["paragraph"], citation["page"]) == (1, 16, 15)
