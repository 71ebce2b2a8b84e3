"""Retrieval quality and its parts: the bundled document set and `kollm rag eval`, dense
vectors from a local encoder (a tiny random BERT built here), reciprocal rank fusion, the
thresholds and the cross-encoder reranker."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from kollm.cli import app
from kollm.config import RagConfig
from kollm.rag.evaluate import query_metrics
from kollm.rag.index import Hit
from kollm.rag.ingest import unwrap_lines
from kollm.rag.search import Retriever, fuse
from tests.rag.conftest import PASSAGES


def _bert(out, texts, classifier=False, cls_pooling=False):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        BertModel,
        PreTrainedTokenizerFast,
    )

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(
        texts, trainers.WordPieceTrainer(vocab_size=300, special_tokens=special)
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    fast.save_pretrained(str(out))
    config = BertConfig(
        vocab_size=len(fast),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=1,
    )
    model = (BertForSequenceClassification if classifier else BertModel)(config)
    model.save_pretrained(str(out))
    if cls_pooling:
        (out / "1_Pooling").mkdir()
        (out / "1_Pooling" / "config.json").write_text('{"pooling_mode_cls_token": true}')
    return out


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    return _bert(tmp_path_factory.mktemp("enc"), list(PASSAGES.values()), cls_pooling=True)


def test_the_bundled_set_beats_whitespace_matching_and_eval_reports_it(tmp_path, monkeypatch, repo):
    monkeypatch.setenv("KOLLM_HOME", str(tmp_path / "home"))
    docs = repo / "data" / "sample" / "documents"
    runner = CliRunner()
    out = runner.invoke(app, ["rag", "index", str(docs), "--collection", "gov"])
    assert out.exit_code == 0 and "120 indexed" in out.output and "0 failed" in out.output
    index_report = json.loads((tmp_path / "home" / "rag" / "gov" / "index_report.json").read_text())
    assert index_report["languages"] == {"ko": index_report["chunks"]}
    assert 0 < index_report["chunk_chars"]["median"] <= index_report["chunk_chars"]["max"] <= 300
    queries = repo / "data" / "sample" / "rag_queries.jsonl"
    out = runner.invoke(app, ["rag", "eval", "gov", "--queries", str(queries), "--json"])
    assert out.exit_code == 0, out.output
    metrics = json.loads(out.output.splitlines()[-1])
    assert metrics["queries"] >= 100 and metrics["recall"]["@10"] >= 0.95
    assert metrics["ndcg_at_10"] >= 0.85  # whitespace BM25 gets about 0.71 (bench/rag_bench.py)
    report = json.loads((tmp_path / "home" / "rag" / "gov" / "eval.json").read_text())
    assert len(report["per_query"]) == metrics["queries"]
    assert (tmp_path / "home" / "rag" / "gov" / "eval.html").exists()


def test_eval_names_a_bad_queries_line(tmp_path, monkeypatch, docs):
    monkeypatch.setenv("KOLLM_HOME", str(tmp_path / "home"))
    CliRunner().invoke(app, ["rag", "index", str(docs), "--collection", "c"])
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"query": "전입", "relevant": ["moving.txt"]}\n{"query": "x"}\n')
    out = CliRunner().invoke(app, ["rag", "eval", "c", "--queries", str(bad)])
    assert out.exit_code == 2 and "q.jsonl:2" in out.output and "relevant" in out.output


def test_metrics_of_one_ranking():
    m = query_metrics(["b", "a", "c"], {"a"})
    assert m["recall@1"] == 0 and m["recall@5"] == 1 and m["rr@10"] == 0.5
    assert m["ndcg@10"] == pytest.approx(1 / np.log2(3))
    assert query_metrics(["x"], {"a"})["ndcg@10"] == 0


def test_vectors_are_indexed_and_the_same_text_is_its_own_nearest(tmp_path, docs, encoder_dir):
    settings = RagConfig(embedder=str(encoder_dir))
    retriever = Retriever(settings, tmp_path / "home")
    report = retriever.index.index_paths("c", [docs], encoder=retriever.encoder)
    assert report.embedded == 3 and retriever.encoder.pooling == "cls"
    (vector,) = retriever.encoder.encode([PASSAGES["passport.txt"]])
    (hit, *_) = retriever.index.dense_search("c", vector, retriever.encoder.name, 3)
    assert hit.doc_id == "passport.txt" and hit.score == pytest.approx(1.0, abs=1e-4)
    (docs / "moving.txt").write_text("전입신고는 30일 안에 하면 됩니다.", encoding="utf-8")
    assert retriever.index.index_paths("c", [docs], encoder=retriever.encoder).embedded == 1
    assert retriever.mode == "hybrid"
    assert retriever.retrieve("c", "거주자 우선 주차 신청", 1)[0].doc_id == "parking.txt"


def test_fusion_rewards_agreement_and_thresholds_leave_nothing(tmp_path, docs, encoder_dir):
    def hit(cid):
        return Hit(f"d{cid}", cid, "s", None, 0, 1, 0.0, "t")

    fused = fuse([[hit(1), hit(2), hit(3)], [hit(2), hit(4), hit(5)]], 4)
    assert [h.chunk_id for h in fused][:2] == [2, 1]  # in both lists beats first in one
    assert fused[0].score == pytest.approx(1 / 62 + 1 / 61, abs=1e-6)
    settings = RagConfig(embedder=str(encoder_dir), min_score=100.0, min_similarity=0.9999)
    retriever = Retriever(settings, tmp_path / "home")
    retriever.index.index_paths("c", [docs], encoder=retriever.encoder)
    assert retriever.retrieve("c", "전입신고 기한") == []


def test_a_reranker_reorders_the_candidates(tmp_path, docs, encoder_dir):
    reranker = _bert(tmp_path / "rr", list(PASSAGES.values()), classifier=True)
    retriever = Retriever(RagConfig(reranker=str(reranker)), tmp_path / "home")
    retriever.index.index_paths("c", [docs])
    query = "신청 신고 여권 주차 전입"
    hits = retriever.retrieve("c", query, 3)
    scores = retriever.reranker.scores(query, [h.text for h in hits])
    assert [h.score for h in hits] == pytest.approx(sorted(scores, reverse=True), abs=1e-3)
    assert retriever.mode == "keyword+rerank"


def test_a_bad_encoder_dir_is_named(tmp_path, monkeypatch, docs):
    monkeypatch.setenv("KOLLM_HOME", str(tmp_path / "home"))
    out = CliRunner().invoke(
        app, ["rag", "index", str(docs), "--collection", "c", "--embedder", str(tmp_path)]
    )
    assert out.exit_code == 2 and "rag.embedder" in out.output and "config.json" in out.output


def test_pdf_lines_are_rejoined_into_sentences_but_titles_and_items_stay():
    page = (
        "2026년 주차 공고\n"
        "신청 기간은 3월 2일부터 3월 20일까지이며, 주말에는\n"
        "접수하지 않습니다.\n"
        "1. 신청서를 냅니다.\n"
        "제3조(서류) 신청하려는 사람은 서류를 내야 합니다."
    )
    assert unwrap_lines(page).splitlines() == [
        "2026년 주차 공고",
        "신청 기간은 3월 2일부터 3월 20일까지이며, 주말에는 접수하지 않습니다.",
        "1. 신청서를 냅니다.",
        "제3조(서류) 신청하려는 사람은 서류를 내야 합니다.",
    ]
