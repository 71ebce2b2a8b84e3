"""`kollm run` and `kollm demo`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from kollm.cli.common import (
    OverridesArg,
    RecipeArg,
    _load,
    app,
    console,
    progress_bar,
    user_errors,
)
from kollm.cli.loop import _print_decision
from kollm.cli.train import _train_table
from kollm.config import recipe_text
from kollm.registry import Registry


def _run_table(result) -> Table:
    table = Table(title=f"kollm run: {result.recipe.name}")
    table.add_column("stage")
    table.add_column("")
    table.add_column("result")
    table.add_column("time", justify="right")
    for stage in result.stages:
        status = "skipped (unchanged)" if stage.skipped else "ran"
        line = _stage_line(stage.name, stage.summary)
        table.add_row(stage.name, status, line, f"{stage.seconds:.0f} s")
    return table


def _stage_line(name: str, s: dict[str, Any]) -> str:
    if name == "data":
        dropped = sum(step["dropped"] for step in s["steps"])
        kept = ", ".join(f"{k} {v}" for k, v in s["output"].items())
        return f"read {sum(s['input'].values())}, dropped {dropped}, kept {kept}"
    if name == "train":
        return _train_table(s)
    if name == "eval":
        parts = []
        if "model" in s:
            parts.append(f"model ROUGE score {s['model']['score']:.2f}")
        if "baseline_lead" in s:
            parts.append(f"lead baseline {s['baseline_lead']['score']:.2f}")
        if "perplexity" in s:
            parts.append(f"perplexity {s['perplexity']:.2f}")
        return ", ".join(parts)
    return f"{s['ref']} {', '.join(s['aliases'])}"


def _progress_factory(description: str, total: int | None):
    return progress_bar(description, total)


def run_and_report(recipe_path: Path, overrides: list[str] | None, force: bool):
    from kollm.pipeline.run import run_recipe

    loaded = _load(recipe_path, overrides)
    # The registry records the recipe as it ran: the file, and the overrides given with it.
    text = recipe_text(recipe_path) + "".join(f"# override: {o}\n" for o in overrides or [])
    with user_errors():
        result = run_recipe(loaded, text, force, progress=_progress_factory)
    console.print(_run_table(result))
    return result


@app.command("run")
def run(
    recipe: RecipeArg,
    overrides: OverridesArg = None,
    force: Annotated[bool, typer.Option(help="Run every stage, changed or not.")] = False,
) -> None:
    """data -> train -> eval -> register; a stage whose inputs did not change is skipped."""
    run_and_report(recipe, overrides, force)


def _demo_rag(recipe, times: dict) -> None:
    """The retrieval step: index the bundled documents, answer two questions from them."""
    import time

    from kollm.pipeline.demo import demo_rag
    from kollm.rag.index import place

    console.rule("kollm demo: answers from the bundled documents, with citations")
    started = time.monotonic()
    with user_errors():
        shown = demo_rag(recipe, Registry(), Path("data/sample/rag_queries.jsonl"))
    times["rag"] = time.monotonic() - started
    console.print(
        f"collection {shown.collection}: {shown.chunks} chunks; retrieval nDCG@10 "
        f"{shown.ndcg_at_10:.3f} on {shown.queries} labelled queries (kollm rag eval)"
    )
    for item in shown.answers:
        console.print(f"[bold]Q:[/] {item['question']}")
        console.print(f"[bold]A:[/] {item['answer'].strip()}", highlight=False)
        for c in item["citations"]:
            where = place(c.get("page"), c.get("section"), c.get("paragraph"))
            where = f" {where}" if where else ""
            console.print(f"   [{c['index']}] {c['doc_id']}{where} chars {c['start']}-{c['end']}")


@app.command("demo")
def demo(
    recipe: Annotated[Path, typer.Option(help="The demo recipe.")] = Path("recipes/demo.yaml"),
    force: Annotated[bool, typer.Option(help="Run every stage, changed or not.")] = False,
    loop: Annotated[
        bool,
        typer.Option("--loop", help="Then serve it, post scripted feedback, and run the loop."),
    ] = False,
) -> None:
    """The embedded default: a scratch model trained on the bundled Korean dialogues."""
    import time

    started = time.monotonic()
    console.rule("kollm demo: data -> train -> eval -> register, on this CPU, offline")
    result = run_and_report(recipe, None, force)
    times = {s.name: s.seconds for s in result.stages}
    r = result.recipe
    console.print(f"data report:  {r.data_dir / 'report' / 'report.html'}")
    if r.train is not None:
        console.print(f"loss curve:   {r.train_dir / 'loss.png'}")
    if r.eval is not None:
        console.print(f"eval report:  {r.eval_dir / 'report.html'}")
    if result.version is not None:
        console.print(
            f"registry:     {result.version.ref} aliases {result.version.aliases} "
            f"({Registry().path}); try: kollm registry list"
        )
    if loop:
        from kollm.pipeline.demo import demo_loop

        console.rule("kollm demo --loop: serve, feedback, retrain, gate")
        loop_started = time.monotonic()
        with user_errors():
            corrections, decision = demo_loop(r, Registry())
        times["loop"] = time.monotonic() - loop_started
        console.print(f"scripted users sent {corrections} corrections through POST /v1/feedback")
        if decision.decision != "not triggered":
            console.print(f"the trigger fired by itself: {decision.trigger}")
        _print_decision(r, decision)
        if r.rag.paths:
            _demo_rag(r, times)
    spent = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in times.items())
    console.print(f"demo: {time.monotonic() - started:.0f} s in all ({spent})")
