"""`kollm synth RECIPE` and the quick paths `kollm synth answer|translate|back-translate`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from kollm.cli.common import (
    DefaultCommandGroup,
    _load,
    app,
    console,
    fail,
    progress_bar,
    user_errors,
)

synth_app = typer.Typer(
    cls=DefaultCommandGroup,
    no_args_is_help=True,
    help="Build training data through an LLM endpoint: `kollm synth RECIPE` runs the recipe's "
    "synth steps; `kollm synth answer|translate|back-translate IN -o OUT` is the quick path.",
)
app.add_typer(synth_app, name="synth")

EndpointOpt = Annotated[str, typer.Option("--endpoint", help="OpenAI-compatible base URL (…/v1).")]
ModelOpt = Annotated[str, typer.Option("--model", help="The model's id at that URL.")]
OutOpt = Annotated[Path, typer.Option("-o", "--output", help="The JSONL to write.")]
ConcOpt = Annotated[int, typer.Option(help="Calls in flight at once.")]
MaxTokOpt = Annotated[int, typer.Option(help="Longest answer a call asks for.")]


def _summary(stats: list[dict], usage: dict, output: Path) -> None:
    table = Table(title="kollm synth")
    for column in ("step", "seen", "kept", "dropped", "why dropped"):
        table.add_column(column)
    for s in stats:
        why = ", ".join(f"{k} {v}" for k, v in s["reasons"].items()) or "-"
        table.add_row(s["step"], str(s["seen"]), str(s["kept"]), str(s["dropped"]), why)
    console.print(table)
    console.print(
        f"calls {usage['calls']} (cache hits {usage['cache_hits']}), tokens "
        f"{usage['prompt_tokens']} in / {usage['completion_tokens']} out; wrote {output}"
    )


def _failures():
    from kollm.endpoint import EndpointError
    from kollm.synth.pipeline import SynthError

    return (EndpointError, SynthError)


@synth_app.command("run", hidden=True)
def synth_run(recipe: Annotated[Path, typer.Argument(help="A recipe with a synth section.")]):
    """Run the recipe's synth steps, clean the result, write it with its manifest."""
    from kollm.synth.pipeline import run_synth

    loaded = _load(recipe, None)
    if loaded.synth is None:
        fail(f"{recipe}: no synth section")
    with user_errors():
        try:
            result = run_synth(loaded, progress=progress_bar)
        except _failures() as err:
            fail(str(err))
    m = result.manifest
    _summary(m["steps"], m["usage"], result.output)
    console.print(f"manifest: {result.output.parent / 'manifest.json'} (sha256 {m['sha256'][:12]})")


def _quick(
    task: str,
    in_path: Path,
    output: Path,
    endpoint: str,
    model: str,
    concurrency: int,
    max_tokens: int,
    **options,
) -> None:
    """One step over one file, no recipe: its records out, and `<out>.manifest.json`."""
    import hashlib

    from kollm.config import EndpointConfig, SynthConfig, SynthTaskConfig
    from kollm.data.io import DataError, read_jsonl, write_json, write_jsonl
    from kollm.synth.pipeline import build_step, client_for, lineage

    try:
        rows = read_jsonl(in_path)
    except (DataError, FileNotFoundError) as err:
        fail(str(err))
    cfg = SynthConfig(
        endpoint=EndpointConfig(
            url=endpoint, model=model, concurrency=concurrency, max_tokens=max_tokens
        ),
        tasks=[SynthTaskConfig(task=task, **options)],
    )
    client = client_for(cfg.endpoint)
    step = build_step(cfg.tasks[0], client, client, cfg.seed)
    try:
        with progress_bar(task, len(rows)) as advance:
            step.advance = advance
            made = step.run(rows)
    except _failures() as err:
        fail(str(err))
    write_jsonl(output, made)
    stats = [{**step.stats.as_dict(), "template_sha": step.template_sha()}]
    manifest = {
        **lineage(cfg, stats, client, client),
        "input": str(in_path),
        "output": str(output),
        "records": len(made),
        "sha256": hashlib.sha256(output.read_bytes()).hexdigest(),
    }
    write_json(output.with_name(output.name + ".manifest.json"), manifest)
    _summary(stats, manifest["usage"], output)


@synth_app.command("answer")
def synth_answer(
    in_path: Annotated[Path, typer.Argument(help="JSONL of instructions.")],
    output: OutOpt,
    endpoint: EndpointOpt,
    model: ModelOpt,
    field: Annotated[str, typer.Option(help="The field holding the question.")] = "instruction",
    concurrency: ConcOpt = 4,
    max_tokens: MaxTokOpt = 512,
) -> None:
    """Write each record with an `output` from the endpoint (records that have one pass)."""
    _quick("answer", in_path, output, endpoint, model, concurrency, max_tokens, field=field)


@synth_app.command("translate")
def synth_translate(
    in_path: Annotated[Path, typer.Argument(help="Alpaca-format JSONL in English.")],
    output: OutOpt,
    endpoint: EndpointOpt,
    model: ModelOpt,
    concurrency: ConcOpt = 4,
    max_tokens: MaxTokOpt = 512,
) -> None:
    """instruction, input and output into Korean, placeholders and code kept."""
    _quick("translate", in_path, output, endpoint, model, concurrency, max_tokens)


@synth_app.command("back-translate")
def synth_back_translate(
    in_path: Annotated[Path, typer.Argument(help="JSONL of Korean records.")],
    output: OutOpt,
    endpoint: EndpointOpt,
    model: ModelOpt,
    field: Annotated[list[str] | None, typer.Option(help="Fields to paraphrase.")] = None,
    concurrency: ConcOpt = 4,
    max_tokens: MaxTokOpt = 512,
) -> None:
    """ko -> en -> ko paraphrases for augmentation, placeholders (#Person1#) kept."""
    _quick(
        "back_translate",
        in_path,
        output,
        endpoint,
        model,
        concurrency,
        max_tokens,
        fields=field or ["dialogue"],
    )
