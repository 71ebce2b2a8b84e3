"""The `kollm` command: each subcommand parses its arguments and calls one stage function."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from kollm import __version__
from kollm.config import Recipe, RecipeError, load_recipe
from kollm.data.io import DataError

app = typer.Typer(
    help="kollm: run Korean LLMs in-house, from data to serving.", no_args_is_help=True
)
data_app = typer.Typer(help="The data stage: clean, de-identify, dedup, filter, split, report.")
recipe_app = typer.Typer(help="Recipes: check them and read their schema.")
app.add_typer(data_app, name="data")
app.add_typer(recipe_app, name="recipe")

console = Console()
err_console = Console(stderr=True)

RecipeArg = Annotated[Path, typer.Argument(help="Recipe YAML file.", show_default=False)]
OverridesArg = Annotated[
    list[str] | None, typer.Argument(help="key.path=value overrides, e.g. data.dedup.threshold=0.8")
]


def fail(message: str, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """Errors in the user's input exit 2 with their message, without a traceback."""
    try:
        yield
    except (RecipeError, DataError) as err:
        fail(str(err))


@contextmanager
def progress_bar(description: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, console=err_console, transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)


def _load(recipe: Path, overrides: list[str] | None) -> Recipe:
    with user_errors():
        return load_recipe(recipe, overrides)


@app.callback(invoke_without_command=True)
def main(
    version: Annotated[bool, typer.Option("--version", help="Print the version.")] = False,
) -> None:
    if version:
        console.print(f"kollm {__version__}")
        raise typer.Exit()


# --- data ------------------------------------------------------------------------------------


def _steps_table(stats: dict[str, Any]) -> Table:
    table = Table(title="Data stage")
    for column in ("step", "seen", "kept", "dropped", "reasons / changes"):
        table.add_column(
            column, justify="left" if column in ("step", "reasons / changes") else "right"
        )
    for s in stats["steps"]:
        detail = ", ".join(f"{k} {v}" for k, v in {**s["reasons"], **s["changes"]}.items())
        table.add_row(s["step"], str(s["seen"]), str(s["kept"]), str(s["dropped"]), detail or "-")
    return table


def run_data_prepare(recipe: Recipe) -> dict[str, Any]:
    from kollm.data.pipeline import prepare

    if recipe.data is None:
        fail("the recipe has no 'data' section")
    with user_errors(), progress_bar("reading and cleaning") as advance:
        result = prepare(recipe.data, recipe.data_dir, advance)
    console.print(_steps_table(result.stats))
    output = ", ".join(f"{k} {v}" for k, v in result.stats["output"].items())
    console.print(
        f"input {result.stats['input']} -> output {output}; bad lines {result.stats['bad_lines']}"
    )
    console.print(f"report: {result.files['report_html']}  stats: {result.files['stats']}")
    return result.stats


@data_app.command("prepare")
def data_prepare(
    recipe: RecipeArg,
    overrides: OverridesArg = None,
    skip_bad_lines: Annotated[
        bool, typer.Option(help="Skip malformed lines (written to bad_lines.jsonl).")
    ] = False,
) -> None:
    """Run the recipe's data stage: normalise, mask PII, filter, dedup, split, report."""
    extra = ["data.skip_bad_lines=true"] if skip_bad_lines else []
    run_data_prepare(_load(recipe, [*(overrides or []), *extra]))


@data_app.command("clean")
def data_clean(
    input_path: Annotated[
        Path, typer.Argument(help="Input JSONL, CSV or Parquet.", show_default=False)
    ],
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Output JSONL.", show_default=False)
    ],
    field: Annotated[str, typer.Option("--field", help="The text field to clean.")] = "text",
    skip_bad_lines: Annotated[
        bool, typer.Option(help="Skip malformed lines (kept in a side file).")
    ] = False,
) -> None:
    """Normalise, mask PII and dedup one field of each record, keeping the other fields."""
    from kollm.data.clean import clean_file

    with user_errors(), progress_bar("cleaning") as advance:
        summary = clean_file(input_path, output, field, skip_bad_lines, advance)
    console.print(_steps_table(summary))
    console.print(f"kept {summary['kept']} records -> {output}")


@data_app.command("sample")
def data_sample(
    out_dir: Annotated[Path, typer.Argument(help="Directory for the sample files.")] = Path(
        "data/sample"
    ),
) -> None:
    """Write the bundled Korean sample data (seeded, so always the same files)."""
    from kollm.samples import write_samples

    for name, count in write_samples(out_dir).items():
        console.print(f"{out_dir / name}: {count} records")


# --- recipes ---------------------------------------------------------------------------------


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
        "docs/recipe.md"
    ),
) -> None:
    """Write the recipe reference (docs/recipe.md) from the field descriptions."""
    from kollm.data.io import write_text
    from kollm.docs import recipe_markdown

    write_text(output, recipe_markdown())
    console.print(f"wrote {output}")


# --- demo ------------------------------------------------------------------------------------


@app.command("demo")
def demo(
    recipe: Annotated[Path, typer.Option(help="The demo recipe.")] = Path("recipes/demo.yaml"),
) -> None:
    """Run the embedded default on the bundled Korean sample data (data stage for now)."""
    loaded = _load(recipe, None)
    console.rule(f"kollm demo: {loaded.name}")
    run_data_prepare(loaded)
