"""The shared SQLite database under KOLLM_HOME (`registry.db`): one file in WAL mode, changed
only through the ordered, named migrations in `kollm.store.migrations`.

The registry, the request log, feedback, loop decisions, jobs, retrieval and the endpoint cache
each keep their own tables in it, read and written only through the module that owns them
(`kollm.store.owners` names it); this package imports none of them.

The home dir kollm creates is 0700 and the database 0600 (SQLite gives its -wal and -shm the
database's mode): the request log holds what users asked. A store that exists but cannot be
written (a read-only KOLLM_HOME, an -shm file that cannot be created) is opened read-only with
a warning: a server still serves from it, and `store_problem` says why it takes no writes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from contextlib import closing
from pathlib import Path

from kollm.store.migrations import MIGRATIONS, migrate

DATABASE = "registry.db"

__all__ = [
    "DATABASE",
    "MIGRATIONS",
    "connect",
    "default_home",
    "migrate",
    "open_store",
    "store_problem",
]

log = logging.getLogger("kollm.store")

# Stores opened read-only in this process: database path -> (the URI connections use, why).
# Every module reaches the store through `connect`, so all of them read it the same way.
_READ_ONLY: dict[str, tuple[str, str]] = {}


def default_home() -> Path:
    """`$KOLLM_HOME`, else `.kollm/` in the working directory."""
    return Path(os.environ.get("KOLLM_HOME", ".kollm"))


def _connect(target: str, uri: bool = False) -> sqlite3.Connection:
    conn = sqlite3.connect(target, timeout=60, isolation_level=None, uri=uri)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout=60000")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def connect(path: Path | str) -> sqlite3.Connection:
    """A connection as every writer uses it: autocommit (writers open their own
    `BEGIN IMMEDIATE`), rows by column name, a long busy timeout, foreign keys enforced.
    Read-only (writes fail) when `open_store` found the store cannot be written."""
    read_only = _READ_ONLY.get(str(path))
    return _connect(read_only[0], uri=True) if read_only else _connect(str(path))


def store_problem(path: Path | str) -> str | None:
    """Why the store at `path` takes no writes in this process, or None when it does."""
    found = _READ_ONLY.get(str(path))
    return found[1] if found else None


def open_store(home: Path | str | None = None) -> tuple[Path, Path]:
    """(home, database path), with the database migrated to the latest schema; a store that
    cannot be written is opened read-only (see `store_problem`)."""
    home = Path(home) if home is not None else default_home()
    _private_dir(home)
    path = home / DATABASE
    created = _private_file(path)
    try:
        with closing(_connect(str(path))) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            migrate(conn)
    except sqlite3.OperationalError as err:
        if created or err.sqlite_errorname.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
            raise
        _open_read_only(path, err)
    else:
        _READ_ONLY.pop(str(path), None)
    return home, path


def _private_dir(home: Path) -> None:
    """Create the home 0700 when it is not there (a home that exists keeps its mode)."""
    if not home.is_dir():
        home.mkdir(parents=True, mode=0o700, exist_ok=True)


def _private_file(path: Path) -> bool:
    """Create an empty database file 0600 (SQLite starts a new database in it); True when this
    call created it."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return False
    return True


def _open_read_only(path: Path, err: sqlite3.OperationalError) -> None:
    """Read the store that cannot be written: `mode=ro` where its -shm can be read, else
    `immutable` (a directory nobody can write holds no WAL either); the original error when
    neither reads it."""
    base = path.absolute().as_uri()
    for uri in (f"{base}?mode=ro", f"{base}?mode=ro&immutable=1"):
        with contextlib.suppress(sqlite3.Error), closing(_connect(uri, uri=True)) as conn:
            conn.execute("SELECT count(*) FROM _migrations").fetchone()
            reason = f"the store {path} cannot be written ({err}); it is read-only"
            _READ_ONLY[str(path)] = (uri, reason)
            log.warning("%s: nothing is logged or registered until it can be written", reason)
            return
    raise err
