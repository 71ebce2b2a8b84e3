"""`kollm registry list|show|promote|rollback|log|verify|gc`."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from kollm.cli.common import (
    console,
    registry_app,
    user_errors,
)
from kollm.registry import Registry


@registry_app.command("list")
def registry_list(
    name: Annotated[str | None, typer.Argument(help="Only this model.")] = None,
) -> None:
    """Every registered version with its aliases and headline score."""
    table = Table(title=f"Registry {Registry().path}")
    for column in ("model", "version", "aliases", "method", "base", "score", "created"):
        table.add_column(column)
    for v in Registry().list(name):
        score = v.metrics.get("score")
        table.add_row(
            v.name,
            str(v.version),
            ", ".join(v.aliases),
            v.method or "-",
            v.base_model or "-",
            f"{score:.2f}" if isinstance(score, int | float) else "-",
            v.created_at,
        )
    console.print(table)


@registry_app.command("show")
def registry_show(
    ref: Annotated[str, typer.Argument(help="NAME, NAME:VERSION or NAME@ALIAS.")],
) -> None:
    """One version with its full lineage (recipe text included), its evaluations and exports."""
    with user_errors():
        registry = Registry()
        version = registry.get(ref)
        evaluations = registry.evaluations(ref)
        exports = registry.exports(ref)
    shown = {**version.__dict__, "evaluations": evaluations, "exports": exports}
    console.print_json(json.dumps(shown, default=str))


@registry_app.command("promote")
def registry_promote(
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[int, typer.Argument(help="Version to promote.")],
    alias: Annotated[str, typer.Option(help="Alias to move.")] = "production",
) -> None:
    """Point an alias (default production) at a version."""
    with user_errors():
        moved = Registry().promote(name, version, alias)
    console.print(f"{name}@{alias} -> {moved.ref}")


@registry_app.command("rollback")
def registry_rollback(
    name: Annotated[str, typer.Argument(help="Model name.")],
    alias: Annotated[str, typer.Option(help="Alias to move back.")] = "production",
) -> None:
    """Return an alias to the version it pointed at before its latest promotion."""
    with user_errors():
        moved = Registry().rollback(name, alias)
    console.print(f"{name}@{alias} -> {moved.ref}")


@registry_app.command("log")
def registry_log(name: Annotated[str, typer.Argument(help="Model name.")]) -> None:
    """Every alias move of a model (append-only)."""
    table = Table(title=f"Alias moves of {name}")
    for column in ("at", "alias", "action", "from", "to"):
        table.add_column(column)
    for e in Registry().alias_log(name):
        table.add_row(
            e["at"], e["alias"], e["action"], str(e["from_version"] or "-"), str(e["to_version"])
        )
    console.print(table)


@registry_app.command("verify")
def registry_verify(
    ref: Annotated[str, typer.Argument(help="NAME, NAME:VERSION or NAME@ALIAS.")],
) -> None:
    """Check a version's stored files against the sha256 recorded when it was registered (and
    an adapter's base against the weights it was trained on)."""
    with user_errors():
        version = Registry().checkout(ref)
    console.print(
        f"{version.ref}: {len(version.files or {})} files match ({version.artifact_path})"
    )


@registry_app.command("gc")
def registry_gc(
    apply: Annotated[
        bool, typer.Option("--apply", help="Delete them (default: list only).")
    ] = False,
) -> None:
    """Stored artifacts that no version points at; a dry run unless --apply."""
    unused = Registry().gc(apply=apply)
    for path in unused:
        console.print(f"{'removed' if apply else 'unused'}: {path}")
    verb = "removed" if apply else "would remove (run with --apply)"
    console.print(f"{len(unused)} unused artifact(s) {verb}" if unused else "nothing to collect")
