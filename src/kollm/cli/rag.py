"""`kollm rag index|query|eval`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from kollm.cli.common import _load, app, console, fail, progress_bar

rag_app = typer.Typer(
    help="Retrieval over your documents: index them, query, measure.", no_args_is_help=True
)
app.add_typer(rag_app, name="rag")

RecipeOpt = Annotated[
    Path | None, typer.Option(help="Take settings from this recipe's rag section.")
]


def _settings(recipe: Path | None, **given):
    """The recipe's `rag` section (or the defaults) with the options given on the line."""
    from kollm.config import RagConfig

    cfg = _load(recipe, None).rag if recipe is not None else RagConfig()
    return cfg.model_copy(update={k: v for k, v in given.items() if v is not None})


def _retriever(cfg):
    from kollm.rag.embed import EncoderError
    from kollm.rag.search import Retriever

    retriever = Retriever(cfg)
    try:
        retriever.encoder, retriever.reranker  # noqa: B018  (load now: a bad dir exits 2)
    except (EncoderError, OSError) as err:
        fail(str(err))
    return retriever


@rag_app.command("index")
def rag_index(
    paths: Annotated[
        list[Path] | None, typer.Argument(help="Files or directories [the recipe's rag.paths].")
    ] = None,
    collection: Annotated[str | None, typer.Option(help="Collection [rag.collection].")] = None,
    recipe: RecipeOpt = None,
    prune: Annotated[bool, typer.Option(help="Drop documents no longer under PATHS.")] = False,
    mask_pii: Annotated[
        bool | None, typer.Option("--mask-pii", help="Mask personal information first.")
    ] = None,
    max_chars: Annotated[int | None, typer.Option(help="Most characters a chunk [300].")] = None,
    embedder: Annotated[
        Path | None, typer.Option(help="Local encoder dir: also index vectors (hybrid search).")
    ] = None,
) -> None:
    """Index documents (TXT, MD, HTML, JSONL, HWP, HWPX, PDF, DOCX); unchanged files are skipped."""
    from kollm.rag.limits import Limits

    cfg = _settings(
        recipe,
        collection=collection,
        mask_pii=mask_pii,
        max_chars=max_chars,
        embedder=str(embedder) if embedder else None,
    )
    paths = paths or [Path(p) for p in cfg.paths]
    if not paths:
        fail("name the files or directories to index, or give --recipe with rag.paths")
    retriever = _retriever(cfg)
    with progress_bar("indexing", None) as advance:
        report = retriever.index.index_paths(
            cfg.collection,
            paths,
            cfg.mask_pii,
            prune,
            cfg.max_chars,
            advance,
            retriever.encoder,
            cfg.passage_prefix,
            Limits.from_config(cfg),
        )
    files = retriever.index.write_report(report)
    console.print(
        f"{cfg.collection}: {report.indexed} indexed, {report.unchanged} unchanged, "
        f"{report.removed} removed, {len(report.failures)} failed; {report.chunks} chunks"
        + (f", {report.embedded} embedded" if retriever.encoder else "")
    )
    for failure in report.failures:
        console.print(f"  failed: {failure['path']}: {failure['reason']}")
    for note in report.notes:
        console.print(f"  note: {note['path']}: {note['note']}")
    console.print(f"report: {files[0]} {files[1]}")


@rag_app.command("query")
def rag_query(
    collection: Annotated[str, typer.Argument(help="The collection.")],
    query: Annotated[str, typer.Argument(help="The question.")],
    top_k: Annotated[int, typer.Option(help="How many chunks.")] = 5,
    recipe: RecipeOpt = None,
    min_score: Annotated[float | None, typer.Option(help="Least BM25 score of a hit.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
) -> None:
    """The chunks that best match a question, best first (BM25 over Korean morphemes; hybrid
    with the recipe's rag.embedder)."""
    retriever = _retriever(_settings(recipe, min_score=min_score))
    hits = retriever.retrieve(collection, query, top_k)
    if as_json:
        print(json.dumps([h.as_dict() for h in hits], ensure_ascii=False))
        return
    table = Table(title=f"{collection}: {query} ({retriever.mode})")
    for column in ("score", "source", "where", "text"):
        table.add_column(column)
    for h in hits:
        table.add_row(f"{h.score:.3f}", h.doc_id, h.place or "-", h.text[:120])
    console.print(table)


@rag_app.command("eval")
def rag_eval(
    collection: Annotated[str, typer.Argument(help="The collection.")],
    queries: Annotated[
        Path, typer.Option(help="JSONL: `query` and `relevant` (a list of doc_ids) a line.")
    ],
    recipe: RecipeOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
) -> None:
    """Retrieval quality over labelled queries: recall@1/5/10, MRR@10, nDCG@10."""
    from kollm.rag.evaluate import QueryFileError, evaluate_retrieval, read_queries, write_report

    try:
        labelled = read_queries(queries)
    except (QueryFileError, FileNotFoundError) as err:
        fail(str(err))
    retriever = _retriever(_settings(recipe))
    if collection not in retriever.index.collections():
        fail(f"no collection '{collection}' (index it first with kollm rag index)")
    with progress_bar("querying", len(labelled)) as advance:
        report = evaluate_retrieval(
            lambda q, k: retriever.retrieve(collection, q, k), labelled, advance
        )
    report.mode = retriever.mode
    files = write_report(report, retriever.index.home / "rag" / collection)
    summary = {k: v for k, v in report.as_dict().items() if k != "per_query"}
    if as_json:
        print(json.dumps(summary, ensure_ascii=False))
        return
    table = Table(title=f"{collection}: {report.queries} queries ({report.mode})")
    for column in ("recall@1", "recall@5", "recall@10", "MRR@10", "nDCG@10", "p95 ms"):
        table.add_column(column)
    r = report.recall
    table.add_row(
        *(f"{v:.3f}" for v in (r["@1"], r["@5"], r["@10"], report.mrr_at_10, report.ndcg_at_10)),
        f"{report.latency_ms['p95']:.1f}",
    )
    console.print(table)
    console.print(f"report: {files[0]} {files[1]}")
