"""`kollm tune`."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from kollm.cli.common import (
    OverridesArg,
    RecipeArg,
    _load,
    app,
    console,
    fail,
)


@app.command("tune")
def tune_cmd(
    recipe: RecipeArg,
    overrides: OverridesArg = None,
    trials: Annotated[
        int | None,
        typer.Option(help="Run this many more trials now (default: up to tune.trials in all)."),
    ] = None,
) -> None:
    """Optuna over the recipe's `tune.space`, maximising the eval metric; resumable."""
    from kollm.pipeline.tune import tune

    _load(recipe, overrides)
    try:
        result = tune(recipe, trials, overrides)
    except ValueError as err:
        fail(str(err))
    table = Table(
        title=f"Best of {result.trials} trials ({result.pruned} pruned): {result.best_value:.3f}"
    )
    table.add_column("field")
    table.add_column("value")
    for name, value in result.best_params.items():
        table.add_row(name, str(value))
    console.print(table)
    console.print(f"summary: {result.files['summary']}  plot: {result.files['plot']}")
