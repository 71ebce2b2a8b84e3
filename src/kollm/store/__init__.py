"""The shared SQLite database under KOLLM_HOME (`registry.db`): one file in WAL mode, changed
only through the ordered, named migrations in `kollm.store.migrations`.

The registry, the request log, feedback, loop decisions and jobs each keep their own tables in
it and reach them through their own module; this package knows none of them.
"""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from pathlib import Path

from kollm.store.migrations import MIGRATIONS, migrate

DATABASE = "registry.db"

__all__ = ["DATABASE", "MIGRATIONS", "connect", "default_home", "migrate", "open_store"]


def default_home() -> Path:
    """`$KOLLM_HOME`, else `.kollm/` in the working directory."""
    return Path(os.environ.get("KOLLM_HOME", ".kollm"))


def connect(path: Path | str) -> sqlite3.Connection:
    """A connection as every writer uses it: autocommit (writers open their own
    `BEGIN IMMEDIATE`), rows by column name, a long busy timeout, foreign keys enforced."""
    conn = sqlite3.connect(path, timeout=60, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout=60000")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def open_store(home: Path | str | None = None) -> tuple[Path, Path]:
    """(home, database path), with the database migrated to the latest schema."""
    home = Path(home) if home is not None else default_home()
    home.mkdir(parents=True, exist_ok=True)
    path = home / DATABASE
    with closing(connect(path)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        migrate(conn)
    return home, path
