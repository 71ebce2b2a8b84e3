"""The shared database: SQLite under KOLLM_HOME (`registry.db`, one file in WAL mode; the
default), or PostgreSQL when `KOLLM_DATABASE_URL` (a recipe's `store.url`) is a
`postgresql://` URL, for servers on several machines sharing one store (`kollm.store.backends`
gives both the same sqlite3-style surface). It changes only through the ordered, named
migrations in `kollm.store.migrations`. Artifacts stay content-addressed files under
KOLLM_HOME either way (a path every machine mounts when the rows are in PostgreSQL).

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

from kollm.store.backends import connect_postgres, is_postgres
from kollm.store.migrations import MIGRATIONS, migrate

DATABASE = "registry.db"
URL_ENV = "KOLLM_DATABASE_URL"

__all__ = [
    "DATABASE",
    "MIGRATIONS",
    "connect",
    "database_url",
    "default_home",
    "migrate",
    "migrate_store",
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


def database_url() -> str | None:
    """`$KOLLM_DATABASE_URL`: `sqlite:///PATH` or `postgresql://...`; None: SQLite under
    KOLLM_HOME."""
    url = os.environ.get(URL_ENV, "").strip()
    if url and not (is_postgres(url) or url.startswith("sqlite:///")):
        raise ValueError(f"{URL_ENV} must be sqlite:///PATH or postgresql://..., not {url!r}")
    return url or None


def _resolve(path: Path | str) -> str:
    """What `path` (a home's registry.db, or a URL) opens: the configured URL when there is
    one, since every home of a process shares the one database."""
    target = str(path)
    if is_postgres(target) or target.startswith("sqlite:///"):
        url = target
    else:
        url = database_url() or target
    return url.removeprefix("sqlite:///")


def _connect(target: str, uri: bool = False) -> sqlite3.Connection:
    conn = sqlite3.connect(target, timeout=60, isolation_level=None, uri=uri)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout=60000")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def connect(path: Path | str) -> sqlite3.Connection:
    """A connection as every writer uses it: autocommit (writers open their own
    `BEGIN IMMEDIATE`), rows by column name, a long busy timeout, foreign keys enforced.
    Read-only (writes fail) when `open_store` found the store cannot be written. `path` is a
    home's database or a URL; `KOLLM_DATABASE_URL` overrides a path."""
    target = _resolve(path)
    if is_postgres(target):
        return connect_postgres(target)  # type: ignore[return-value]
    read_only = _READ_ONLY.get(target)
    return _connect(read_only[0], uri=True) if read_only else _connect(target)


def store_problem(path: Path | str) -> str | None:
    """Why the store at `path` takes no writes in this process, or None when it does."""
    found = _READ_ONLY.get(_resolve(path))
    return found[1] if found else None


def open_store(home: Path | str | None = None) -> tuple[Path, Path]:
    """(home, database path), with the database migrated to the latest schema; a store that
    cannot be written is opened read-only (see `store_problem`)."""
    home, path, _ = migrate_store(home)
    return home, path


def migrate_store(home: Path | str | None = None) -> tuple[Path, Path, list[str]]:
    """`open_store`, and the names of the migrations it applied."""
    home = Path(home) if home is not None else default_home()
    _private_dir(home)
    path = home / DATABASE
    target = _resolve(path)
    if is_postgres(target):
        with closing(connect_postgres(target)) as conn:
            return home, path, migrate(conn)
    path = Path(target)
    created = _private_file(path)
    applied: list[str] = []
    try:
        with closing(_connect(str(path))) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            applied = migrate(conn)
    except sqlite3.OperationalError as err:
        if created or err.sqlite_errorname.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
            raise
        _open_read_only(path, err)
    else:
        _READ_ONLY.pop(str(path), None)
    return home, path, applied


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
