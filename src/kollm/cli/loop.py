"""`kollm loop [run]|history`."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from kollm.cli.common import (
    OverridesArg,
    RecipeArg,
    _load,
    console,
    loop_app,
    user_errors,
)
from kollm.config import Recipe
from kollm.registry import Registry


@loop_app.command("run", hidden=True)
def loop_run(
    recipe: RecipeArg,
    overrides: OverridesArg = None,
    force: Annotated[bool, typer.Option(help="Retrain even when no trigger rule is met.")] = False,
    every: Annotated[
        float | None, typer.Option(help="Check again every N seconds (a schedule) until Ctrl-C.")
    ] = None,
) -> None:
    """Check the trigger; when it fires: export, retrain, evaluate both, gate, promote or reject."""
    import time

    from kollm.pipeline.loop import run_loop

    loaded = _load(recipe, overrides)
    while True:
        with user_errors():
            decision = run_loop(loaded, force=force)
        _print_decision(loaded, decision)
        if every is None:
            return
        time.sleep(every)


def _print_decision(loaded: Recipe, decision) -> None:
    console.print(
        f"loop: {decision.decision} ({decision.trigger}); production was {decision.production}"
    )
    if decision.metrics:
        gated = loaded.loop.gate.metrics
        for side in ("production", "candidate"):
            values = ", ".join(f"{m} {decision.metrics[side][m]:.3f}" for m in gated)
            console.print(f"  {side:10s} {values}")
        for failure in decision.metrics["gate_failures"]:
            console.print(f"  gate: {failure}")
    if decision.candidate:
        console.print(f"  promoted {decision.candidate} to {loaded.loop.alias}")


@loop_app.command("history")
def loop_history(
    name: Annotated[str | None, typer.Argument(help="Only this model.")] = None,
) -> None:
    """Every loop decision with the metrics that led to it."""
    from kollm.pipeline.loop import history

    table = Table(title="Loop decisions")
    for column in (
        "at",
        "model",
        "decision",
        "trigger",
        "production",
        "candidate",
        "score cand/prod",
    ):
        table.add_column(column)
    for row in history(Registry(), name):
        m = row["metrics"]
        scores = f"{m['candidate']['score']:.2f} / {m['production']['score']:.2f}" if m else "-"
        table.add_row(
            row["at"],
            row["model"],
            row["decision"],
            row["trigger"],
            str(row["production_version"] or "-"),
            str(row["candidate_version"] or "-"),
            scores,
        )
    console.print(table)
