"""`kollm rag index|query`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from kollm.cli.common import app, console, progress_bar

rag_app = typer.Typer(
    help="Retrieval over your documents: index them, then query.", no_args_is_help=True
)
app.add_typer(rag_app, name="rag")


@rag_app.command("index")
def rag_index(
    paths: Annotated[list[Path], typer.Argument(help="Files or directories to index.")],
    collection: Annotated[str, typer.Option(help="The collection to index into.")],
    prune: Annotated[bool, typer.Option(help="Drop documents no longer under PATHS.")] = False,
    mask_pii: Annotated[bool, typer.Option(help="Mask personal information first.")] = False,
    max_chars: Annotated[int, typer.Option(help="Most characters a chunk.")] = 400,
) -> None:
    """Index documents (TXT, MD, HTML, JSONL, HWPX, PDF, DOCX); unchanged files are skipped."""
    from kollm.rag.index import RagIndex

    index = RagIndex()
    with progress_bar("indexing", None) as advance:
        report = index.index_paths(collection, paths, mask_pii, prune, max_chars, advance)
    files = index.write_report(report)
    console.print(
        f"{collection}: {report.indexed} indexed, {report.unchanged} unchanged, "
        f"{report.removed} removed, {len(report.failures)} failed; {report.chunks} chunks"
    )
    for failure in report.failures:
        console.print(f"  failed: {failure['path']}: {failure['reason']}")
    console.print(f"report: {files[0]} {files[1]}")


@rag_app.command("query")
def rag_query(
    collection: Annotated[str, typer.Argument(help="The collection.")],
    query: Annotated[str, typer.Argument(help="The question.")],
    top_k: Annotated[int, typer.Option(help="How many chunks.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
) -> None:
    """The chunks that best match a question, best first (BM25 over Korean morphemes)."""
    from kollm.rag.index import RagIndex

    hits = RagIndex().search(collection, query, top_k)
    if as_json:
        print(json.dumps([h.as_dict() for h in hits], ensure_ascii=False))
        return
    table = Table(title=f"{collection}: {query}")
    for column in ("score", "source", "page", "text"):
        table.add_column(column)
    for h in hits:
        table.add_row(f"{h.score:.2f}", h.doc_id, str(h.page or "-"), h.text[:120])
    console.print(table)
