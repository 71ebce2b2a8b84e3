"""`kollm store migrate|copy`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kollm.cli.common import app, console, fail

store_app = typer.Typer(
    help="The store: SQLite under KOLLM_HOME, or PostgreSQL (KOLLM_DATABASE_URL).",
    no_args_is_help=True,
)
app.add_typer(store_app, name="store")


@store_app.command("migrate")
def store_migrate() -> None:
    """Bring the store (KOLLM_DATABASE_URL, else KOLLM_HOME's SQLite) to the latest schema;
    running it again changes nothing."""
    from kollm.store import database_url, migrate_store, store_problem

    _, path, applied = migrate_store()
    if problem := store_problem(path):
        fail(problem)
    url = database_url() or ""
    where = "PostgreSQL" if url.startswith("postgres") else path
    said = f"applied {', '.join(applied)}" if applied else "up to date"
    console.print(f"store {where}: {said}")


@store_app.command("copy")
def store_copy(
    to: Annotated[str, typer.Option("--to", help="The postgresql:// URL to copy into.")],
    source: Annotated[
        Path | None, typer.Option(help="The SQLite store (default: KOLLM_HOME/registry.db).")
    ] = None,
) -> None:
    """Copy the embedded SQLite store into an empty PostgreSQL database, every table's row
    count checked; then set KOLLM_DATABASE_URL to it (artifacts stay under KOLLM_HOME)."""
    from kollm.store import DATABASE, default_home
    from kollm.store.copy import CopyError, copy_store

    try:
        counts = copy_store(source or default_home() / DATABASE, to)
    except (CopyError, RuntimeError) as err:
        fail(str(err))
    for table, n in counts.items():
        console.print(f"{table}: {n}")
    console.print(f"copied {sum(counts.values())} rows; row counts match")
