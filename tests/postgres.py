"""A throwaway PostgreSQL server for the store tests: `initdb` in a temp dir (trust auth for the
user `kollm`), `pg_ctl start` on a free loopback port with its socket in that dir, stopped at
the end of the session. Each test gets its own schema (fast, and nothing leaks between tests).

`store_backend` runs a test on both backends: it sets KOLLM_DATABASE_URL for the postgresql
case (SQLite under the test's KOLLM_HOME stays the default) and skips that case, with the
reason, where no server can be started (no binaries, or initdb fails)."""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
_schemas = itertools.count()


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for folder in _BIN_DIRS:
        if (folder / name).exists():
            return str(folder / name)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_server_user(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run it as `postgres` (Debian's package
    creates that user) or `nobody`."""
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", _server_user(), "--", *command]


def _server_user() -> str:
    has_postgres = subprocess.run(["id", "postgres"], capture_output=True).returncode == 0
    return "postgres" if has_postgres else "nobody"


def _owned(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, _server_user())


def _start(temp: Path) -> str:
    initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
    if not (initdb and pg_ctl):
        raise RuntimeError("no initdb/pg_ctl (Debian's postgresql package) on this machine")
    _owned(temp)
    data, port = temp / "data", _free_port()
    run = dict(capture_output=True, text=True, timeout=120)
    done = subprocess.run(
        _as_server_user([initdb, "-D", str(data), "-A", "trust", "-U", "kollm", "-E", "UTF8"]),
        **run,
    )
    if done.returncode != 0:
        raise RuntimeError(f"initdb failed: {done.stderr.strip()[-500:]}")
    options = f"-p {port} -k {temp} -c listen_addresses=127.0.0.1 -c fsync=off"
    options += " -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
    command = [pg_ctl, "-D", str(data), "-l", str(temp / "log"), "-o", options, "-w", "start"]
    done = subprocess.run(_as_server_user(command), **run)
    if done.returncode != 0:
        log = (temp / "log").read_text(errors="replace")[-500:] if (temp / "log").exists() else ""
        raise RuntimeError(f"pg_ctl start failed: {done.stderr.strip()} {log}")
    return f"postgresql://kollm@127.0.0.1:{port}/postgres"


@pytest.fixture(scope="session")
def postgres_server():
    """The URL of the session's server (its `postgres` database), or a skip with why not."""
    pytest.importorskip("psycopg", reason="no psycopg (pip install 'kollm[postgres]')")
    temp = Path(tempfile.mkdtemp(prefix="kollm-pg-"))
    try:
        url = _start(temp)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as err:
        shutil.rmtree(temp, ignore_errors=True)
        pytest.skip(f"no PostgreSQL server: {err}")
    yield url
    stop = [_binary("pg_ctl"), "-D", str(temp / "data"), "-m", "immediate", "stop"]
    subprocess.run(_as_server_user(stop), capture_output=True, timeout=60)
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server):
    """A URL whose tables land in a schema of this test's own."""
    import psycopg

    schema = f"t{os.getpid()}_{next(_schemas)}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    return f"{postgres_server}?options=-csearch_path%3D{schema}"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_backend(request, monkeypatch) -> str:
    """Runs the test on both backends; the name of the one it runs on."""
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
        monkeypatch.setenv("KOLLM_DATABASE_URL", url)
    else:
        monkeypatch.delenv("KOLLM_DATABASE_URL", raising=False)
    return request.param


def share_registry(home: Path) -> None:
    """The versions and aliases of the SQLite store under `home` (a session fixture's, made
    before any test chose a backend) also in the PostgreSQL store KOLLM_DATABASE_URL names,
    so a server on PostgreSQL finds them (the artifacts are under `home` either way)."""
    import sqlite3
    from contextlib import closing

    from kollm.store import connect, open_store

    if not os.environ.get("KOLLM_DATABASE_URL", "").startswith("postgresql"):
        return
    open_store(home)
    with (
        closing(sqlite3.connect(home / "registry.db")) as src,
        closing(connect(home / "registry.db")) as dst,
    ):
        tables = {r[0] for r in src.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for table in ("model_versions", "aliases") if "aliases" in tables else ():
            cur = src.execute(f"SELECT * FROM {table}")
            names = ", ".join(d[0] for d in cur.description)
            marks = ", ".join("?" * len(cur.description))
            for row in cur.fetchall():
                dst.execute(f"INSERT OR IGNORE INTO {table} ({names}) VALUES ({marks})", row)
