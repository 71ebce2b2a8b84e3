"""`kollm train`."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from kollm.cli.common import (
    OverridesArg,
    RecipeArg,
    _load,
    app,
    console,
    user_errors,
)


def _train_table(summary: dict[str, Any]) -> str:
    first, last = summary.get("first_loss"), summary.get("last_loss")
    losses = f"{first:.3f} -> {last:.3f}" if first is not None and last is not None else "-"
    steps = summary["global_step"]
    processes = summary.get("processes", 1)
    on = f" on {processes} processes" if processes > 1 else ""
    return f"{summary['method']} on {summary['base_model']}{on}: {steps} steps, loss {losses}"


@app.command("train")
def train(
    recipe: RecipeArg,
    overrides: OverridesArg = None,
    resume: Annotated[
        bool, typer.Option(help="Continue from the newest complete checkpoint.")
    ] = False,
) -> None:
    """Train the recipe's model: SFT, seq2seq, pretraining, DPO, RM or GRPO; full or PEFT."""
    from kollm.train import run_training

    loaded = _load(recipe, overrides)
    with user_errors():
        result = run_training(loaded, resume=resume)
    console.print(_train_table(result.summary()))
    console.print(f"model: {result.model_dir}  loss curve: {result.train_dir / 'loss.png'}")
