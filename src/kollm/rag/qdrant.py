"""The Qdrant backend: the chunks of a collection mirrored into a Qdrant collection, with a
sparse vector of morpheme term weights (BM25's term part; Qdrant applies the IDF) and, with
an encoder, a dense vector; searches then run in Qdrant. The SQLite store still keeps which
file holds which chunks, so indexing stays incremental. `url` points at a Qdrant server or
cluster; without one, Qdrant's local mode keeps the data in a dir (one process at a time)."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from functools import cache
from typing import Any

PREFIX = "kollm_"
AVG_TERMS = 40.0  # the length BM25's normalisation assumes (a 300-character Korean chunk)
K1, B = 1.2, 0.75


def term_id(term: str) -> int:
    """A stable 31-bit index for a term (Qdrant's sparse vectors are indexed by integers)."""
    return int.from_bytes(hashlib.blake2b(term.encode(), digest_size=4).digest()) & 0x7FFFFFFF


def sparse(terms: list[str], document: bool = True):
    """Term weights: BM25's saturated, length-normalised tf for a chunk; 1 per query term."""
    from qdrant_client import models

    counts = Counter(terms)
    norm = K1 * (1 - B + B * len(terms) / AVG_TERMS)
    weights: dict[int, float] = {}
    for term, tf in counts.items():
        value = tf * (K1 + 1) / (tf + norm) if document else 1.0
        key = term_id(term)
        weights[key] = weights.get(key, 0.0) + value
    return models.SparseVector(indices=list(weights), values=list(weights.values()))


@cache
def _client(url: str | None, path: str | None):
    import atexit

    from qdrant_client import QdrantClient

    client = QdrantClient(url=url) if url else QdrantClient(path=path)
    atexit.register(client.close)  # before interpreter teardown, where its __del__ fails
    return client


class QdrantBackend:
    def __init__(self, url: str | None = None, path: str | None = None) -> None:
        self.client = _client(url, path)

    def _name(self, collection: str) -> str:
        return PREFIX + collection

    def ensure(self, collection: str, dim: int | None) -> None:
        """Create the Qdrant collection on first use (dense vectors of `dim` when known)."""
        from qdrant_client import models

        name = self._name(collection)
        if self.client.collection_exists(name):
            return
        dense = (
            {"dense": models.VectorParams(size=dim, distance=models.Distance.COSINE)} if dim else {}
        )
        self.client.create_collection(
            name,
            vectors_config=dense,
            sparse_vectors_config={
                "terms": models.SparseVectorParams(modifier=models.Modifier.IDF)
            },
        )

    def replace(self, collection: str, source: str, points: list[tuple[int, dict, list[str]]]):
        """The file's points out and its chunks in: (chunk id, payload, terms) each."""
        from qdrant_client import models

        self.ensure(collection, None)
        self.delete_source(collection, source)
        if points:
            self.client.upsert(
                self._name(collection),
                points=[
                    models.PointStruct(id=cid, vector={"terms": sparse(terms)}, payload=payload)
                    for cid, payload, terms in points
                ],
            )

    def delete_source(self, collection: str, source: str) -> None:
        from qdrant_client import models

        match = models.FieldCondition(key="path", match=models.MatchValue(value=source))
        self.client.delete(
            self._name(collection),
            points_selector=models.FilterSelector(filter=models.Filter(must=[match])),
        )

    def set_vectors(self, collection: str, ids: list[int], vectors) -> None:
        from qdrant_client import models

        info = self.client.get_collection(self._name(collection))
        if "dense" not in (info.config.params.vectors or {}):
            raise ValueError(
                f"Qdrant collection {self._name(collection)} has no dense vectors: it was "
                "indexed without an embedder; delete it and index again with rag.embedder"
            )
        self.client.update_vectors(
            self._name(collection),
            points=[
                models.PointVectors(id=cid, vector={"dense": v.tolist()})
                for cid, v in zip(ids, vectors, strict=True)
            ],
        )

    def keyword(self, collection: str, terms: list[str], limit: int) -> list[tuple[float, dict]]:
        return self._query(collection, sparse(terms, document=False), "terms", limit)

    def dense(self, collection: str, vector, limit: int) -> list[tuple[float, dict]]:
        return self._query(collection, [float(x) for x in vector], "dense", limit)

    def _query(self, collection, query, using: str, limit: int) -> list[tuple[float, dict]]:
        name = self._name(collection)
        if not self.client.collection_exists(name):
            return []
        found = self.client.query_points(
            name, query=query, using=using, limit=limit, with_payload=True
        )
        return [(p.score, {**p.payload, "id": p.id}) for p in found.points]

    def collections(self) -> dict[str, int]:
        names = [c.name for c in self.client.get_collections().collections]
        return {n[len(PREFIX) :]: self.client.count(n).count for n in names if n.startswith(PREFIX)}


def payload(row: dict[str, Any], source: str, ordinal: int) -> dict[str, Any]:
    """What a point carries: enough to cite the chunk without the SQLite store."""
    return {
        "path": source,
        "doc_id": row["doc_id"],
        "ord": ordinal,
        "page": row["page"],
        "start": row["start"],
        "end": row["end"],
        "text": row["text"],
        "title": row["title"],
        # the row's meta as the SQLite store keeps it (the section and paragraph it cites)
        "meta": json.dumps(row["meta"], ensure_ascii=False),
    }
