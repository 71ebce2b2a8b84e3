"""The `jobs` table: a recipe stage run as a job, by the local executor or on a Ray cluster.

The executors (`kollm.cluster.jobs`, `kollm.cluster.ray_jobs`) write it and the web console
reads it, so its SQL lives here, below both (the server may not import the cluster). The
executor's transactions (claiming a slot) pass their connection to the calls that take one.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing, nullcontext
from pathlib import Path
from typing import Any

from kollm.store import connect, open_store

_RUNNING_LOCAL = "SELECT * FROM jobs WHERE status = 'running' AND executor = 'local'"


class JobTable:
    def __init__(self, home: Path | str | None = None) -> None:
        self.home, self.path = open_store(home)

    def connect(self) -> sqlite3.Connection:
        """A connection for a transaction over several of the calls that take one."""
        return connect(self.path)

    def insert(self, row: dict[str, Any]) -> int:
        """Add a job (its columns as they are stored); returns its id."""
        columns, marks = ", ".join(row), ", ".join("?" * len(row))
        with closing(self.connect()) as conn:
            cursor = conn.execute(
                f"INSERT INTO jobs ({columns}) VALUES ({marks})", tuple(row.values())
            )
        return int(cursor.lastrowid)

    def update(self, job_id: int, conn: sqlite3.Connection | None = None, **fields: Any) -> None:
        sets = ", ".join(f"{k} = ?" for k in fields)
        with closing(self.connect()) if conn is None else nullcontext(conn) as c:
            c.execute(f"UPDATE jobs SET {sets} WHERE id = ?", (*fields.values(), job_id))

    def get(self, job_id: int, conn: sqlite3.Connection | None = None) -> dict[str, Any] | None:
        with closing(self.connect()) if conn is None else nullcontext(conn) as c:
            row = c.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return dict(row) if row else None

    def rows(self, newest_first: bool = False, limit: int | None = None) -> list[dict[str, Any]]:
        """Every job (the newest `limit`), as stored."""
        query = "SELECT * FROM jobs ORDER BY id" + (" DESC" if newest_first else "")
        query += " LIMIT ?" if limit is not None else ""
        with closing(self.connect()) as conn:
            return [dict(r) for r in conn.execute(query, () if limit is None else (limit,))]

    @staticmethod
    def running_local(
        conn: sqlite3.Connection, with_pid: bool = False, job_id: int | None = None
    ) -> list[dict[str, Any]]:
        """The local executor's running jobs (with a recorded pid; only `job_id`)."""
        query = _RUNNING_LOCAL + (" AND pid IS NOT NULL" if with_pid else "")
        query += " AND id = ?" if job_id is not None else ""
        return [dict(r) for r in conn.execute(query, () if job_id is None else (job_id,))]

    @staticmethod
    def fail_running(conn: sqlite3.Connection, job_id: int, pid: int, at: str) -> bool:
        """Mark failed the job if it still runs under `pid`; whether it did."""
        done = conn.execute(
            "UPDATE jobs SET status = 'failed', finished_at = ? WHERE id = ?"
            " AND status = 'running' AND pid = ?",
            (at, job_id, pid),
        )
        return bool(done.rowcount)

    @staticmethod
    def queued_before(conn: sqlite3.Connection, job_id: int) -> list[int | None]:
        """The runner pids of the local jobs queued before `job_id`."""
        found = conn.execute(
            "SELECT pid FROM jobs WHERE status = 'queued' AND executor = 'local' AND id < ?",
            (job_id,),
        ).fetchall()
        return [pid for (pid,) in found]
