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
        float | None,
        typer.Option(
            help="Check again every N seconds (a schedule) until Ctrl-C or SIGTERM; a run that"
            " fails is recorded and the schedule goes on."
        ),
    ] = None,
) -> None:
    """Check the trigger; when it fires: export, retrain, evaluate both, gate, promote or reject."""
    from kollm.pipeline.loop import run_loop

    loaded = _load(recipe, overrides)
    if every is not None:
        _schedule(loaded, force, every)
        return
    with user_errors():
        decision = run_loop(loaded, force=force)
    _print_decision(loaded, decision)
    if decision.decision == "failed":
        raise typer.Exit(1)


def _stop(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM (a service manager) ends the schedule as Ctrl-C does


def _schedule(loaded: Recipe, force: bool, every: float) -> None:
    """Run the loop every `every` seconds; no outcome ends it, only Ctrl-C or SIGTERM."""
    import signal
    import time

    from kollm.pipeline.loop import run_loop

    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        while True:
            try:
                _print_decision(loaded, run_loop(loaded, force=force))
            except Exception as err:  # a schedule outlives any one run
                console.print(f"loop: error ({type(err).__name__}: {err}); next check in {every} s")
            time.sleep(every)
    except KeyboardInterrupt:
        console.print("loop: stopped")
    finally:
        signal.signal(signal.SIGTERM, previous)


def _print_decision(loaded: Recipe, decision) -> None:
    console.print(
        f"loop: {decision.decision} ({decision.trigger}); production was {decision.production}"
    )
    m = decision.metrics
    for note in ("reason", "error"):
        if m.get(note):
            console.print(f"  {note}: {m[note]}", markup=False)  # errors hold [brackets]
    if "candidate" in m:
        gated = loaded.loop.gate.metrics
        for side in ("production", "candidate"):
            values = ", ".join(f"{g} {m[side][g]:.3f}" for g in gated if g in m[side])
            console.print(f"  {side:10s} {values}")
    if "gate" in m:  # the gate's record: every reason, with both numbers and the threshold
        for reason in m["gate"]["reasons"]:
            said = f"  gate: {'pass' if reason['passed'] else 'FAIL'}  {reason['says']}"
            console.print(said, markup=False)
    if decision.candidate:
        console.print(f"  promoted {decision.candidate} to {loaded.loop.alias}")
    if m.get("restored"):
        console.print(f"  rolled {loaded.loop.alias} back to {m['restored']}")


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
        scores = (
            f"{m['candidate']['score']:.2f} / {m['production']['score']:.2f}"
            if "candidate" in m
            else "-"
        )
        note = m.get("reason") or m.get("error")  # why a run was skipped or failed
        table.add_row(
            row["at"],
            row["model"],
            row["decision"],
            row["trigger"] + (f": {note}" if note else ""),
            str(row["production_version"] or "-"),
            str(row["candidate_version"] or "-"),
            scores,
        )
    console.print(table)
