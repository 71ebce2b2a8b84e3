"""The local job executor: a recipe stage as a detached process, tracked in the SQLite store.

`submit` records the job and starts `python -m kollm.orchestrate.jobs RUN ID` in a new process
session, so the job outlives the CLI that started it. That runner waits for a free slot (at
most `max_running` jobs at once), starts the stage with its output in the job's log, records
the exit code, and marks the job succeeded or failed. `stop` ends the runner's whole process
group (the stage and its children).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing, suppress
from pathlib import Path
from typing import Any

from kollm.registry import Registry
from kollm.registry.store import connect

STAGES = ("train", "eval", "tune", "loop", "run", "data")
ACTIVE = ("queued", "running")


def group_alive(pgid: int) -> bool:
    """Whether a process of group `pgid` still runs (zombies, which only wait to be reaped, do not
    count). Reads /proc: the local executor targets Linux hosts."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # fields: state, ppid, pgrp, ...
            return True
    return False


class JobError(ValueError):
    """An unknown job, or a stage that cannot be submitted."""


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


class LocalExecutor:
    def __init__(self, home: Path | str | None = None, max_running: int = 2) -> None:
        registry = Registry(home)  # applies the migrations
        self.home, self.db = registry.home, registry.path
        self.max_running = max_running

    def _conn(self) -> sqlite3.Connection:
        return connect(self.db)

    def submit(
        self,
        stage: str,
        recipe: str,
        overrides: list[str] | None = None,
        resources: dict[str, Any] | None = None,
    ) -> int:
        if stage not in STAGES:
            raise JobError(f"stage: expected one of {', '.join(STAGES)}, got {stage!r}")
        if stage == "data":
            command = [sys.executable, "-m", "kollm", "data", "prepare", recipe, *(overrides or [])]
        else:
            command = [sys.executable, "-m", "kollm", stage, recipe, *(overrides or [])]
        with closing(self._conn()) as conn:
            cursor = conn.execute(
                "INSERT INTO jobs (stage, command, executor, resources, status, submitted_at,"
                " log_path) VALUES (?,?,?,?,?,?,?)",
                (
                    stage,
                    json.dumps(command),
                    "local",
                    json.dumps(resources or {}),
                    "queued",
                    _now(),
                    "",
                ),
            )
            job_id = int(cursor.lastrowid)
            log = self.home / "jobs" / f"{job_id}.log"
            conn.execute("UPDATE jobs SET log_path = ? WHERE id = ?", (str(log), job_id))
        log.parent.mkdir(parents=True, exist_ok=True)
        runner = [
            sys.executable,
            "-m",
            "kollm.orchestrate.jobs",
            "RUN",
            str(job_id),
            str(self.home),
            str(self.max_running),
        ]
        with log.open("ab") as out:
            proc = subprocess.Popen(
                runner,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                stdin=subprocess.DEVNULL,
            )
        self._set(job_id, pid=proc.pid)
        return job_id

    def _set(self, job_id: int, **fields: Any) -> None:
        sets = ", ".join(f"{k} = ?" for k in fields)
        with closing(self._conn()) as conn:
            conn.execute(f"UPDATE jobs SET {sets} WHERE id = ?", (*fields.values(), job_id))

    def get(self, job_id: int) -> dict[str, Any]:
        with closing(self._conn()) as conn:
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobError(f"no job {job_id}")
        return {
            **dict(row),
            "command": json.loads(row["command"]),
            "resources": json.loads(row["resources"]),
        }

    def list(self) -> list[dict[str, Any]]:
        with closing(self._conn()) as conn:
            ids = [r[0] for r in conn.execute("SELECT id FROM jobs ORDER BY id")]
        return [self.get(i) for i in ids]

    def logs(self, job_id: int) -> str:
        path = Path(self.get(job_id)["log_path"])
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def stop(self, job_id: int) -> dict[str, Any]:
        """End the job's runner and every process under it."""
        job = self.get(job_id)
        if job["status"] in ACTIVE and job["pid"]:
            self._set(job_id, status="stopped", finished_at=_now())
            for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
                with suppress(ProcessLookupError):
                    os.killpg(job["pid"], sig)
                deadline = time.monotonic() + grace
                while group_alive(job["pid"]) and time.monotonic() < deadline:
                    time.sleep(0.1)
                if not group_alive(job["pid"]):
                    break
        return self.get(job_id)

    def wait(self, job_id: int, timeout_s: float = 600) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while self.get(job_id)["status"] in ACTIVE:
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {self.get(job_id)['status']}")
            time.sleep(0.2)
        return self.get(job_id)

    # --- the runner, in its own process session --------------------------------------------

    def _claim_slot(self, job_id: int) -> bool:
        """Mark the job running if fewer than `max_running` run; False while the queue is full."""
        with closing(self._conn()) as conn:
            conn.execute("BEGIN IMMEDIATE")
            running = conn.execute("SELECT COUNT(*) FROM jobs WHERE status = 'running'").fetchone()[
                0
            ]
            status = conn.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
            if status != "queued" or running >= self.max_running:
                conn.execute("COMMIT")
                return status != "queued"
            conn.execute(
                "UPDATE jobs SET status = 'running', started_at = ? WHERE id = ?", (_now(), job_id)
            )
            conn.execute("COMMIT")
            return True

    def run(self, job_id: int) -> int:
        while not self._claim_slot(job_id):
            time.sleep(0.5)
        job = self.get(job_id)
        if job["status"] != "running":  # stopped while it waited
            return 0
        code = subprocess.call(job["command"], stdin=subprocess.DEVNULL)
        if self.get(job_id)["status"] == "running":
            self._set(
                job_id,
                status="succeeded" if code == 0 else "failed",
                exit_code=code,
                finished_at=_now(),
            )
        return code


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "RUN":
    sys.exit(LocalExecutor(sys.argv[3], int(sys.argv[4])).run(int(sys.argv[2])))
