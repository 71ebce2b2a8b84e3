"""The Qdrant backend, in Qdrant's local mode (the code path a URL takes to a cluster): the
same index, re-index, prune and search behaviour as the SQLite store, and hybrid search."""

from __future__ import annotations

import pytest

from kollm.config import RagConfig
from kollm.rag.search import Retriever
from tests.rag.conftest import PASSAGES
from tests.rag.test_retrieval import _bert


@pytest.mark.parametrize("backend", ["sqlite", "qdrant"])
def test_both_backends_index_search_and_follow_changes(tmp_path, docs, backend):
    settings = RagConfig(backend=backend, qdrant_path=str(tmp_path / f"qdrant-{backend}"))
    retriever = Retriever(settings, tmp_path / "home")
    index = retriever.index
    assert (index.qdrant is not None) == (backend == "qdrant")
    index.index_paths("civil", [docs])
    (hit, *_) = retriever.retrieve("civil", "여권을 잃어버렸을 때 어디에 신고하죠?", 3)
    assert hit.doc_id == "passport.txt" and "민원여권과" in hit.text and hit.start == 0
    (docs / "moving.txt").write_text("전입신고는 이제 30일 안에 하면 됩니다.", encoding="utf-8")
    assert index.index_paths("civil", [docs]).indexed == 1
    texts = [h.text for h in retriever.retrieve("civil", "전입신고 기한", 5)]
    assert any("30일" in t for t in texts) and not any("14일" in t for t in texts)
    (docs / "parking.txt").unlink()
    assert index.index_paths("civil", [docs], prune=True).removed == 1
    assert index.collections() == {"civil": 2}
    assert all(h.doc_id != "parking.txt" for h in retriever.retrieve("civil", "주차 신청", 5))


def test_qdrant_hybrid_search_uses_the_dense_vectors(tmp_path, docs):
    encoder = _bert(tmp_path / "enc", list(PASSAGES.values()))
    settings = RagConfig(backend="qdrant", qdrant_path=str(tmp_path / "q"), embedder=str(encoder))
    retriever = Retriever(settings, tmp_path / "home")
    report = retriever.index.index_paths("c", [docs], encoder=retriever.encoder)
    assert report.embedded == 3
    (vector,) = retriever.encoder.encode([PASSAGES["parking.txt"]])
    (hit, *_) = retriever.index.dense_search("c", vector, retriever.encoder.name, 3)
    assert hit.doc_id == "parking.txt" and hit.score == pytest.approx(1.0, abs=1e-3)
    assert retriever.retrieve("c", "거주자 우선 주차", 1)[0].doc_id == "parking.txt"
