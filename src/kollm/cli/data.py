"""`kollm data prepare|clean|sample`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from kollm.cli.common import (
    OverridesArg,
    RecipeArg,
    _load,
    console,
    data_app,
    fail,
    progress_bar,
    user_errors,
)
from kollm.config import Recipe


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
    # the Ray executor writes shards and a manifest beside the report and stats
    shown = {"report": "report_html", "manifest": "manifest", "stats": "stats"}
    console.print(
        "  ".join(f"{k}: {result.files[v]}" for k, v in shown.items() if v in result.files)
    )
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
