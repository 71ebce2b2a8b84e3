"""`kollm store copy --to URL`: an embedded (SQLite) store's rows into PostgreSQL, in one
transaction, with every table's row count checked before it commits."""

from __future__ import annotations

from contextlib import closing
from pathlib import Path

from kollm.store import connect, migrate
from kollm.store.backends import IDENTITY_TABLES, is_postgres

# Parents before the tables whose foreign keys point at them.
FIRST = ("model_versions", "responses", "feedback")


class CopyError(RuntimeError):
    pass


def copy_store(source: Path | str, target: str) -> dict[str, int]:
    """Copy every table of the SQLite store at `source` into the PostgreSQL database at
    `target` (migrated first; it must hold no rows); {table: rows copied}."""
    if not is_postgres(target):
        raise CopyError(f"the target must be a postgresql:// URL, not {target!r}")
    if not Path(source).is_file():
        raise CopyError(f"no SQLite store at {source}")
    with closing(connect(f"sqlite:///{source}")) as src, closing(connect(target)) as dst:
        migrate(src)  # the same schema on both sides
        migrate(dst)
        tables = _tables(dst)
        if filled := [t for t in tables if dst.execute(f"SELECT 1 FROM {t} LIMIT 1").fetchone()]:
            raise CopyError(f"the target already holds rows (in {', '.join(filled)})")
        dst.execute("BEGIN IMMEDIATE")
        try:
            counts = {t: _copy_table(src, dst, t) for t in tables}
            dst.execute("COMMIT")
        except BaseException:
            dst.execute("ROLLBACK")
            raise
    return counts


def _tables(dst) -> list[str]:
    rows = dst.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        " AND table_type = 'BASE TABLE' AND table_name != '_migrations'"
    ).fetchall()
    names = sorted(r[0] for r in rows)
    return [t for t in FIRST if t in names] + [t for t in names if t not in FIRST]


def _copy_table(src, dst, table: str) -> int:
    columns = [
        r[0]
        for r in dst.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema ="
            " current_schema() AND table_name = ? AND is_generated = 'NEVER'"
            " ORDER BY ordinal_position",
            (table,),
        )
    ]
    quoted = ", ".join(f'"{c}"' for c in columns)
    rows = src.execute(f"SELECT {quoted} FROM {table}").fetchall()
    dst.copy_rows(table, columns, rows)
    if table in IDENTITY_TABLES:  # the identity goes on after the copied ids
        dst.execute(
            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
            f" (SELECT COALESCE(MAX(id), 0) + 1 FROM {table}), false)"
        )
    (copied,) = dst.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
    if copied != len(rows):
        raise CopyError(f"{table}: {len(rows)} rows in the source, {copied} copied")
    return copied
