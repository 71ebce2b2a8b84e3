"""Retrieval benchmark, one run: kollm's morpheme BM25 (and hybrid, with --embedder DIR)
against whitespace BM25, what LangChain's BM25Retriever and Open WebUI do by default
(`text.split()`), on the bundled document set; then index speed and query latency at 20k
chunks. Goals (issue 13): morpheme nDCG@10 >= whitespace + 0.15; p95 < 100 ms at 20k chunks
on 2 cores without a reranker.

    .venv/bin/python bench/rag_bench.py [--embedder DIR] [--chunks 20000]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from kollm.config import RagConfig
from kollm.rag.evaluate import evaluate_retrieval, read_queries
from kollm.rag.index import Hit, RagIndex
from kollm.rag.search import Retriever
from kollm.samples.documents import SERVICES, document_set

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "data" / "sample" / "documents"
QUERIES = REPO / "data" / "sample" / "rag_queries.jsonl"


class WhitespaceBm25:
    """BM25 (k1 1.2, b 0.75, the same IDF as ours) over whitespace tokens of the same chunks."""

    def __init__(self, chunks: list[tuple[str, str]]) -> None:
        self.docs = [(doc, Counter(text.lower().split())) for doc, text in chunks]
        self.lengths = [sum(c.values()) for _, c in self.docs]
        self.avgdl = sum(self.lengths) / len(self.lengths)
        self.df = Counter(w for _, c in self.docs for w in c)

    def search(self, query: str, k: int) -> list[Hit]:
        terms, n, scored = set(query.lower().split()), len(self.docs), []
        for (doc, counts), length in zip(self.docs, self.lengths, strict=True):
            norm = 1.2 * (0.25 + 0.75 * length / self.avgdl)
            score = sum(
                math.log(1 + (n - self.df[t] + 0.5) / (self.df[t] + 0.5))
                * counts[t]
                * 2.2
                / (counts[t] + norm)
                for t in terms
                if counts[t]
            )
            if score > 0:
                scored.append((score, doc))
        scored.sort(key=lambda p: -p[0])
        return [Hit(doc, 0, doc, None, 0, 0, s, "") for s, doc in scored[:k]]


def quality(home: Path, embedder: str | None) -> dict[str, float]:
    index = RagIndex(home)
    started = time.perf_counter()
    report = index.index_paths("bundled", [DOCS])
    seconds = time.perf_counter() - started
    queries = read_queries(QUERIES)
    ours = Retriever(RagConfig(), home)
    results = {
        "morpheme BM25": evaluate_retrieval(lambda q, k: ours.retrieve("bundled", q, k), queries)
    }
    with index_conn(index) as conn:
        chunks = [(r[0], r[1]) for r in conn.execute("SELECT doc_id, text FROM rag_chunks")]
    baseline = WhitespaceBm25(chunks)
    results["whitespace BM25"] = evaluate_retrieval(baseline.search, queries)
    qdrant = Retriever(RagConfig(backend="qdrant", qdrant_path=str(home / "qdrant")), home / "q")
    qdrant.index.index_paths("bundled", [DOCS])
    results["morpheme BM25 (Qdrant local)"] = evaluate_retrieval(
        lambda q, k: qdrant.retrieve("bundled", q, k), queries
    )
    if embedder:
        hybrid = Retriever(RagConfig(embedder=embedder), home)
        index.embed_missing("bundled", hybrid.encoder)
        results["hybrid (BM25 + dense, RRF)"] = evaluate_retrieval(
            lambda q, k: hybrid.retrieve("bundled", q, k), queries
        )
    print(f"bundled set: {report.files} files, {report.chunks} chunks, {len(queries)} queries")
    print(f"  indexed in {seconds:.1f} s ({report.files / seconds:.1f} docs/s, all formats)")
    print(f"  {'':28} nDCG@10  MRR@10  recall@1  recall@10")
    for name, r in results.items():
        print(
            f"  {name:28} {r.ndcg_at_10:.3f}    {r.mrr_at_10:.3f}   {r.recall['@1']:.3f}"
            f"     {r.recall['@10']:.3f}"
        )
    gain = results["morpheme BM25"].ndcg_at_10 - results["whitespace BM25"].ndcg_at_10
    print(f"  morpheme - whitespace nDCG@10: {gain:+.3f} (goal >= +0.150)")
    if not embedder:
        print("  hybrid: not run (give --embedder DIR, a local encoder such as bge-m3)")
    return {"gain": gain}


def index_conn(index: RagIndex):
    from contextlib import closing

    from kollm.store import connect

    return closing(connect(index.path))


def synthetic_records(n_chunks: int, seed: int = 7) -> list[dict]:
    """About `n_chunks` passages: the bundled set's paragraphs, regenerated with new facts
    under new seeds, each service name varied by a district, so the collection is not n
    copies of one text."""
    rng = random.Random(seed)
    districts = ["마포구", "강남구", "서초구", "송파구", "노원구", "은평구", "관악구", "동작구"]
    records, s = [], 0
    while len(records) < n_chunks:
        documents, _ = document_set(seed + s)
        district = districts[s % len(districts)]
        for d in documents:
            for i, paragraph in enumerate(d["paragraphs"][1:]):
                text = f"{district} {d['paragraphs'][0]}\n{paragraph}"
                records.append({"id": f"{s}/{d['doc_id']}#{i}", "text": text})
        s += 1
    rng.shuffle(records)
    return records[:n_chunks]


def latency(home: Path, n_chunks: int) -> float:
    home.mkdir(parents=True, exist_ok=True)
    path = home / "synthetic.jsonl"
    with path.open("w", encoding="utf-8") as out:
        for record in synthetic_records(n_chunks):
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    index = RagIndex(home)
    started = time.perf_counter()
    report = index.index_paths("big", [path], max_chars=1000)
    seconds = time.perf_counter() - started
    retriever = Retriever(RagConfig(), home)
    rng = random.Random(3)
    queries = [
        {"query": f"{rng.choice(SERVICES)[1]} {rng.choice(['서류', '수수료', '기간'])}은?"}
        | {"relevant": ["x"], "id": str(i)}
        for i in range(200)
    ]
    result = evaluate_retrieval(lambda q, k: retriever.retrieve("big", q, 5), queries)
    p95 = result.latency_ms["p95"]
    print(
        f"{report.chunks} chunks: indexed in {seconds:.0f} s ({report.chunks / seconds:.0f} "
        f"chunks/s); query latency p50 {result.latency_ms['p50']:.1f} ms, p95 {p95:.1f} ms "
        "(goal p95 < 100 ms, keyword, no reranker)"
    )
    return p95


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--embedder", help="a local encoder dir, for the hybrid row")
    parser.add_argument("--chunks", type=int, default=20000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        gain = quality(Path(tmp) / "a", args.embedder)["gain"]
        p95 = latency(Path(tmp) / "b", args.chunks)
    return 0 if gain >= 0.15 and p95 < 100 else 1


if __name__ == "__main__":
    sys.exit(main())
