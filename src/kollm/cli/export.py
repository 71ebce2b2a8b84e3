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

    with user_errors():
        try:
            result = export_model(
                source,
                format,
                output,
                quant,
                pre_tokenizer=pre_tokenizer,
                trust_remote_code=trust_remote_code,
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
