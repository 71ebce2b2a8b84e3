"""The retriever the CLI, the evaluation and the server share: keyword BM25 over morphemes,
with an encoder also a dense list, the two fused by reciprocal rank (Cormack et al., k=60,
as Elasticsearch and Qdrant fuse); an optional cross-encoder re-orders the fused candidates;
the thresholds drop weak hits, so a question nothing answers gets no source at all."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from kollm.config import RagConfig
from kollm.rag.index import Hit, RagIndex

RRF_K = 60


def fuse(lists: list[list[Hit]], top_k: int) -> list[Hit]:
    """Reciprocal rank fusion: each chunk scores the sum of 1 / (k + rank) over the lists."""
    scores: dict[int, float] = {}
    hits: dict[int, Hit] = {}
    for ranked in lists:
        for rank, hit in enumerate(ranked, 1):
            scores[hit.chunk_id] = scores.get(hit.chunk_id, 0.0) + 1.0 / (RRF_K + rank)
            hits.setdefault(hit.chunk_id, hit)
    order = sorted(scores, key=lambda cid: (-scores[cid], cid))[:top_k]
    return [replace(hits[cid], score=round(scores[cid], 6)) for cid in order]


def _backend(settings: RagConfig, home):
    if settings.backend != "qdrant":
        return None
    from kollm.rag.qdrant import QdrantBackend
    from kollm.store import default_home

    path = settings.qdrant_path or str(Path(home or default_home()) / "qdrant")
    return QdrantBackend(settings.qdrant_url, None if settings.qdrant_url else path)


class Retriever:
    def __init__(self, settings: RagConfig | None = None, home: Path | str | None = None) -> None:
        self.settings = settings or RagConfig()
        self.index = RagIndex(home, _backend(self.settings, home))
        self._encoder = self._reranker = None

    @property
    def encoder(self):
        if self._encoder is None and self.settings.embedder:
            from kollm.rag.embed import load_encoder

            self._encoder = load_encoder(str(Path(self.settings.embedder).resolve()))
        return self._encoder

    @property
    def reranker(self):
        if self._reranker is None and self.settings.reranker:
            from kollm.rag.embed import load_reranker

            self._reranker = load_reranker(str(Path(self.settings.reranker).resolve()))
        return self._reranker

    @property
    def mode(self) -> str:
        mode = "hybrid" if self.settings.embedder else "keyword"
        return f"{mode}+rerank" if self.settings.reranker else mode

    def retrieve(self, collection: str, query: str, top_k: int | None = None) -> list[Hit]:
        """The best chunks for `query`, best first; [] when none passes the thresholds."""
        s = self.settings
        top_k = top_k or s.top_k
        pool = max(4 * top_k, 20)
        keyword = self.index.search(collection, query, pool, s.min_score)
        lists = [keyword]
        if self.encoder is not None:
            (vector,) = self.encoder.encode([s.query_prefix + query])
            lists.append(
                self.index.dense_search(
                    collection, vector, self.encoder.name, pool, s.min_similarity
                )
            )
        hits = fuse(lists, pool) if len(lists) > 1 else keyword
        if self.reranker is not None and hits:
            scores = self.reranker.scores(query, [h.text for h in hits])
            ranked = sorted(zip(scores, hits, strict=True), key=lambda p: (-p[0], p[1].chunk_id))
            hits = [replace(h, score=round(score, 4)) for score, h in ranked]
        return hits[:top_k]
