"""`kollm recipe check|schema|docs`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from kollm.cli.common import (
    OverridesArg,
    RecipeArg,
    _load,
    console,
    recipe_app,
)
from kollm.config import Recipe


@recipe_app.command("check")
def recipe_check(recipe: RecipeArg, overrides: OverridesArg = None) -> None:
    """Validate a recipe (with overrides) and print it with every default filled in."""
    loaded = _load(recipe, overrides)
    console.print_json(loaded.model_dump_json())


@recipe_app.command("schema")
def recipe_schema(
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON schema.")] = False,
) -> None:
    """Every recipe field with its type, default and description."""
    from kollm.docs import schema_rows

    if as_json:
        console.print_json(json.dumps(Recipe.model_json_schema()))
        return
    table = Table(title="Recipe fields")
    for column in ("field", "type", "default", "description"):
        table.add_column(column)
    for row in schema_rows(Recipe):
        table.add_row(*row)
    console.print(table)


@recipe_app.command("docs")
def recipe_docs(
    output: Annotated[Path, typer.Option("-o", "--output", help="Markdown file to write.")] = Path(
        "docs/reference/recipe.md"
    ),
) -> None:
    """Write the recipe reference (docs/reference/recipe.md) from the field descriptions."""
    from kollm.data.io import write_text
    from kollm.docs import recipe_markdown

    write_text(output, recipe_markdown())
    console.print(f"wrote {output}")
