"""`kollm tokenizer report|extend`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from kollm.cli.common import app, console, fail, user_errors

tokenizer_app = typer.Typer(
    help="Korean tokens: what a base's tokenizer costs, and a vocabulary extended for it.",
    no_args_is_help=True,
)
app.add_typer(tokenizer_app, name="tokenizer")

DataOpt = Annotated[Path, typer.Option("--data", help="JSONL/CSV/Parquet (or .txt) of text.")]
FieldOpt = Annotated[str, typer.Option("--field", help="The record field with the text.")]


def _texts(path: Path, field: str) -> list[str]:
    from kollm.data.tokenizer_report import TokenizerReportError, read_texts
    from kollm.text.normalize import normalize_text

    try:
        return [normalize_text(t) for t in read_texts(path, field)]
    except TokenizerReportError as err:
        fail(str(err))
    raise AssertionError


@tokenizer_app.command("report")
def tokenizer_report(
    base: Annotated[str, typer.Argument(help="A model dir or hub id (its tokenizer).")],
    data: DataOpt,
    field: FieldOpt = "text",
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    out: Annotated[Path | None, typer.Option(help="Write report.json and the PNG here.")] = None,
) -> None:
    """Characters per token, tokens per word and per sentence, byte-fallback share and the
    most-cut words of BASE's tokenizer on your text, beside a BPE learnt on that text."""
    from kollm.data.io import write_json
    from kollm.data.tokenizer_report import histogram, report

    with user_errors():
        result = report(base, _texts(data, field))
    if out is not None:
        write_json(out / "report.json", result)
        histogram(result, out / "tokens_per_word.png")
    if as_json:
        console.print_json(json.dumps(result, ensure_ascii=False))
        return
    table = Table(title=f"{base} on {data}")
    for column in ("", "base", "BPE learnt on this text", "base / learnt"):
        table.add_column(column)
    for key in ("chars_per_token", "tokens_per_word", "tokens_per_sentence", "fallback_share"):
        ratio = result["base/reference"][key]
        table.add_row(
            key,
            f"{result['base'][key]:.3f}",
            f"{result['reference'][key]:.3f}",
            f"{ratio:.2f}" if ratio is not None else "-",
        )
    console.print(table)
    words = ", ".join(f"{w} ({n})" for w, n in result["base"]["longest"][:10])
    console.print(f"most-cut words: {words}")
    if out is not None:
        console.print(f"report: {out / 'report.json'}  histogram: {out / 'tokens_per_word.png'}")


@tokenizer_app.command("extend")
def tokenizer_extend(
    base: Annotated[str, typer.Argument(help="A causal model dir or hub id to extend.")],
    data: DataOpt,
    add: Annotated[int, typer.Option("--add", help="Most new Korean pieces to add.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="The extended model dir.")],
    field: FieldOpt = "text",
    held_out: Annotated[
        Path | None, typer.Option(help="Text to measure chars/token on [the data's last 10%].")
    ] = None,
) -> None:
    """Learn up to N Korean pieces on your text (morpheme-aware BPE), add those the base
    lacks, and grow the model's embeddings from the pieces they replace."""
    from transformers import AutoTokenizer

    from kollm.train.vocab import VocabError, chars_per_token, data_sha256, extend

    texts = _texts(data, field)
    if held_out is not None:
        learn, measure = texts, _texts(held_out, field)
    else:
        cut = max(1, len(texts) // 10)
        learn, measure = texts[:-cut], texts[-cut:]
    with user_errors():
        try:
            result = extend(base, learn, add, output, data_sha256(data))
        except VocabError as err:
            fail(str(err))
    before = chars_per_token(AutoTokenizer.from_pretrained(base), measure)
    after = chars_per_token(AutoTokenizer.from_pretrained(str(output)), measure)
    console.print(
        f"added {len(result.pieces)} pieces (ids {result.first_id}..): "
        + ", ".join(result.pieces[:12])
        + (" ..." if len(result.pieces) > 12 else "")
    )
    console.print(
        f"chars per token on {len(measure)} held-out texts: {before:.3f} -> {after:.3f}"
        f" ({after / before:.2f}x)"
    )
    console.print(f"model: {output} (name it as model.base in a recipe)")
