"""`kollm feedback add|stats|export`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from kollm.cli.common import (
    console,
    fail,
    feedback_app,
)


@feedback_app.command("add")
def feedback_add(
    response_id: Annotated[str, typer.Argument(help="The id of a logged response (chatcmpl-...).")],
    rating: Annotated[str, typer.Option(help="good, bad, or 1-5.")],
    category: Annotated[
        list[str] | None,
        typer.Option(
            help="hallucination, harmful, biased, evasive, off-domain or other; repeatable."
        ),
    ] = None,
    comment: Annotated[str | None, typer.Option(help="Free text.")] = None,
    correction: Annotated[str | None, typer.Option(help="The answer the user wanted.")] = None,
) -> None:
    """Rate a logged answer (the same as POST /v1/feedback)."""
    from kollm.feedback.store import FeedbackError, FeedbackStore

    try:
        stored = FeedbackStore().add(
            response_id, rating, category or [], comment, correction, "cli"
        )
    except FeedbackError as err:
        fail(str(err))
    console.print(f"feedback {stored['id']} on {stored['model_version']} ({stored['rating']})")


@feedback_app.command("stats")
def feedback_stats_cmd(
    model: Annotated[str | None, typer.Option(help="Only this model.")] = None,
    since: Annotated[
        str | None, typer.Option(help="Only feedback from this date (YYYY-MM-DD) on.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    png: Annotated[Path, typer.Option(help="Where the chart goes.")] = Path(
        "runs/feedback/stats.png"
    ),
) -> None:
    """Counts and rates per category and per model version, as a table and a PNG."""
    from kollm.feedback.stats import feedback_stats, plot_stats
    from kollm.feedback.store import FeedbackStore

    stats = feedback_stats(FeedbackStore().rows(model, since))
    if as_json:
        print(json.dumps(stats, ensure_ascii=False))
        return
    table = Table(title=f"Feedback: {stats['total']} ratings, bad rate {stats['bad_rate']:.1%}")
    for column in ("version", "ratings", "bad", "bad rate", "categories"):
        table.add_column(column)
    for version, g in stats["versions"].items():
        cats = ", ".join(f"{c} {n}" for c, n in g["categories"].items()) or "-"
        table.add_row(version, str(g["total"]), str(g["bad"]), f"{g['bad_rate']:.1%}", cats)
    console.print(table)
    if stats["total"]:
        plot_stats(stats, png)
        console.print(f"chart: {png}")


@feedback_app.command("export")
def feedback_export(
    format: Annotated[str, typer.Option("--format", help="sft, dpo or kto.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output dir.")] = Path(
        "runs/feedback/export"
    ),
    model: Annotated[str | None, typer.Option(help="Only this model.")] = None,
    kind: Annotated[
        str, typer.Option(help="For sft: instruction or dialogue_summary rows.")
    ] = "instruction",
) -> None:
    """Corrections -> SFT rows and DPO pairs; thumbs -> KTO rows (PII-masked, deduplicated)."""
    from kollm.feedback.export import export_feedback
    from kollm.feedback.store import FeedbackStore
    from kollm.tasks import task_layers

    try:  # answers of a shipped task service train on the prompt the task built
        rows = FeedbackStore().rows(model)
        manifest = export_feedback(rows, format, output, kind, task_layers())
    except ValueError as err:
        fail(str(err))
    console.print(
        f"{manifest['rows']} rows -> {output / manifest['file']} (sha256 {manifest['sha256'][:12]})"
    )
