"""`kollm export`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kollm.cli.common import app, console, fail, user_errors


@app.command("export")
def export(
    source: Annotated[
        str, typer.Argument(help="NAME:VERSION, NAME@ALIAS, a model dir or a LoRA adapter dir.")
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="Directory to write into.")],
    format: Annotated[
        str, typer.Option("--format", "-f", help="hf (a standalone dir), gguf or ct2.")
    ] = "hf",
    quant: Annotated[
        str | None,
        typer.Option(
            help="gguf: f16 (default), bf16, q8_0; q4_k_m ... with llama-quantize on PATH."
            " ct2: int8 (default), float16 ..."
        ),
    ] = None,
    pre_tokenizer: Annotated[
        str | None,
        typer.Option(help="gguf: llama.cpp's name of the BPE pre-tokenizer, if it cannot tell."),
    ] = None,
    measure: Annotated[
        bool,
        typer.Option(
            "--measure/--no-measure",
            help="gguf, ct2: measure the export against the weights it came from (perplexity"
            " ratio, agreement), stored with it in the registry.",
        ),
    ] = True,
    compare: Annotated[
        str | None,
        typer.Option(
            help="Export at each of these (q8_0,q4_K_M,int8 ...) and write one table (size,"
            " load time, tokens/s, perplexity ratio, agreement) as compare.json and"
            " compare.html in the output dir.",
        ),
    ] = None,
    trust_remote_code: Annotated[
        bool,
        typer.Option(
            "--trust-remote-code",
            help="Run the modeling code a model ships beside its weights (to merge, convert).",
        ),
    ] = False,
) -> None:
    """Export a model as a standalone HF dir, a GGUF with its Ollama Modelfile (llama.cpp's
    converter), or a CTranslate2 dir; a LoRA adapter is merged first; a registered version
    records the export (sha256, size) in its lineage."""
    from kollm.cluster.export import ExportError, export_model

    if compare:
        _compare(source, compare, output, trust_remote_code)
        return
    with user_errors():
        try:
            result = export_model(
                source,
                format,
                output,
                quant,
                pre_tokenizer=pre_tokenizer,
                trust_remote_code=trust_remote_code,
                measure=measure,
            )
        except ExportError as err:
            fail(str(err))
    size = result.size_bytes / 1e6
    console.print(f"{result.format} {result.quant or ''}: {result.path} ({size:.1f} MB)")
    console.print(f"sha256 {result.sha256}  source {result.source}")
    for extra in result.files:
        console.print(f"also: {extra}")
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}")
    if result.quality:
        console.print(f"quality against {result.source}: {_figures(result.quality)}")


def _figures(quality: dict) -> str:
    if "not_measured" in quality and "answer_agreement" not in quality:
        return f"not measured ({quality['not_measured']})"
    shown = {k: quality.get(k) for k in ("ppl_ratio", "token_agreement", "answer_agreement")}
    shown["long ppl_ratio"] = (quality.get("long") or {}).get("ppl_ratio")
    return ", ".join(f"{k} {v}" for k, v in shown.items() if v is not None)


def _compare(source: str, kinds: str, output: Path, trust_remote_code: bool) -> None:
    from kollm.cluster.quality import compare, compare_markdown

    with user_errors():
        report = compare(source, kinds.split(","), output, trust_remote_code=trust_remote_code)
    console.print(compare_markdown(report), markup=False, highlight=False)
    console.print(f"written: {output / 'compare.json'}, {output / 'compare.html'}")
