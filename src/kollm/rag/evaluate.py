"""Retrieval quality over labelled queries: recall@1/5/10, MRR@10 and nDCG@10 at the level of
documents (a query's `relevant` lists doc_ids), as BEIR and MTEB report them. Chunks are
ranked by the search, then each document takes the rank of its best chunk."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kollm.rag.index import Hit

CHUNKS_PER_QUERY = 50  # enough chunks for ten distinct documents in practice


class QueryFileError(ValueError):
    """A queries file that cannot be used; the message names the file and line."""


@dataclass
class RetrievalReport:
    queries: int
    recall: dict[str, float]
    mrr_at_10: float
    ndcg_at_10: float
    latency_ms: dict[str, float]
    mode: str = "keyword"
    per_query: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_queries(path: Path) -> list[dict[str, Any]]:
    """Labelled queries: JSONL with `query` (a string) and `relevant` (a list of doc_ids)."""
    from kollm.data.io import DataError, iter_jsonl

    queries = []
    try:
        for number, row in iter_jsonl(path):
            ok = isinstance(row, dict) and isinstance(row.get("query"), str)
            relevant = row.get("relevant") if ok else None
            if not ok or not isinstance(relevant, list) or not relevant:
                raise QueryFileError(
                    f"{path}:{number}: expected 'query' (a string) and 'relevant' "
                    "(a non-empty list of doc_ids)"
                )
            queries.append({"id": row.get("id", f"line{number}"), **row})
    except DataError as err:
        raise QueryFileError(str(err)) from err
    if not queries:
        raise QueryFileError(f"{path}: no queries")
    return queries


def ranked_documents(hits: list[Hit]) -> list[str]:
    """doc_ids in the order of their best chunk."""
    seen: dict[str, None] = {}
    for hit in hits:
        seen.setdefault(hit.doc_id, None)
    return list(seen)


def query_metrics(ranking: list[str], relevant: set[str]) -> dict[str, float]:
    """recall@1/5/10, reciprocal rank within 10 and nDCG@10 (binary gains) of one ranking."""
    found = [i for i, doc in enumerate(ranking[:10]) if doc in relevant]
    dcg = sum(1 / math.log2(i + 2) for i in found)
    ideal = sum(1 / math.log2(i + 2) for i in range(min(len(relevant), 10)))
    metrics = {f"recall@{k}": sum(1 for i in found if i < k) / len(relevant) for k in (1, 5, 10)}
    metrics["rr@10"] = 1 / (found[0] + 1) if found else 0.0
    metrics["ndcg@10"] = dcg / ideal
    return metrics


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def evaluate_retrieval(
    search: Callable[[str, int], list[Hit]],
    queries: list[dict[str, Any]],
    advance: Callable[[int], None] | None = None,
) -> RetrievalReport:
    """Run every query through `search(query, k)` and average the metrics."""
    rows, latencies = [], []
    for q in queries:
        started = time.perf_counter()
        ranking = ranked_documents(search(q["query"], CHUNKS_PER_QUERY))
        latencies.append((time.perf_counter() - started) * 1000)
        metrics = query_metrics(ranking, {str(r) for r in q["relevant"]})
        rows.append({"id": q["id"], "query": q["query"], "top": ranking[:3], **metrics})
        if advance is not None:
            advance(1)

    def mean(key: str) -> float:
        return round(sum(r[key] for r in rows) / len(rows), 4)

    return RetrievalReport(
        queries=len(rows),
        recall={f"@{k}": mean(f"recall@{k}") for k in (1, 5, 10)},
        mrr_at_10=mean("rr@10"),
        ndcg_at_10=mean("ndcg@10"),
        latency_ms={
            "p50": round(_percentile(latencies, 0.5), 2),
            "p95": round(_percentile(latencies, 0.95), 2),
        },
        per_query=rows,
    )


def write_report(report: RetrievalReport, out_dir: Path) -> tuple[Path, Path]:
    """eval.json (metrics and every query) and eval.html (the metrics and the missed
    queries, worst first) under `out_dir`."""
    import html

    from kollm.data.io import write_json, write_text

    write_json(out_dir / "eval.json", report.as_dict())
    summary = {k: v for k, v in report.as_dict().items() if k != "per_query"}
    head = "".join(
        f"<tr><th>{k}</th><td>{html.escape(str(v))}</td></tr>" for k, v in summary.items()
    )
    missed = sorted((q for q in report.per_query if q["rr@10"] < 1), key=lambda q: q["rr@10"])
    rows = "".join(
        f"<tr><td>{html.escape(q['query'])}</td><td>{q['rr@10']:.2f}</td>"
        f"<td>{html.escape(', '.join(q['top']))}</td></tr>"
        for q in missed
    )
    page = (
        "<!doctype html><meta charset='utf-8'><title>retrieval eval</title>"
        f"<h1>Retrieval: {report.queries} queries</h1><table>{head}</table>"
        f"<h2>Not first ({len(missed)})</h2><table><tr><th>query</th><th>RR@10</th>"
        f"<th>top documents</th></tr>{rows}</table>"
    )
    write_text(out_dir / "eval.html", page)
    return out_dir / "eval.json", out_dir / "eval.html"
