"""The local job executor: a recipe stage as a detached process, tracked in the SQLite store.

`submit` records the job and starts `python -m kollm.cluster.jobs RUN ID` in a new process
session, so the job outlives the CLI that started it. That runner waits for a free slot (at
most `max_running` jobs at once), starts the stage with its output in the job's log, records
the exit code, and marks the job succeeded or failed. `stop` ends the runner's whole process
group (the stage and its children).

GPU jobs are placed on free cards: at submit the inventory (this machine's, or the first node of
an inventory file) is checked and the cards with the memory the planner asks for are recorded;
the runner waits until enough of them are free of other running jobs, records them in `devices`
and runs the stage with CUDA_VISIBLE_DEVICES set to them.

A runner records its pid and its process start time (/proc/PID/stat). A job marked running
whose runner died (killed, the machine rebooted) is marked failed when the jobs are listed, read
or a slot is claimed, so it stops holding a slot and its cards: its pid runs no more, or runs a
process that started at another time (the pid was reused, and that process is left alone).
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
from collections.abc import Callable, Iterator
from contextlib import closing, suppress
from pathlib import Path
from typing import Any

from kollm.cluster.inventory import Inventory, InventoryError, local_inventory
from kollm.cluster.jobspec import JobError, JobSpec, planned_card_gib, stage_command
from kollm.jobtable import JobTable
from kollm.logtail import LogTail, poll_interval

ACTIVE = ("queued", "running")
__all__ = ["JobError", "JobSpec", "LocalExecutor", "group_alive"]


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


def process_started(pid: int) -> int | None:
    """When process `pid` started (clock ticks after boot: /proc/PID/stat field 22), or None
    when none runs (a zombie, which only waits to be reaped, has ended)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in ("Z", "X"):  # fields[0] is field 3, the state
        return None
    return int(fields[19])


def runner_alive(job: sqlite3.Row | dict[str, Any]) -> bool:
    """Whether the job's runner still runs: its pid, started when the job recorded (a job
    recorded before start times were kept is judged by its pid alone)."""
    started = process_started(job["pid"])
    return started is not None and job["runner_started"] in (None, started)


def utc_now() -> str:
    """The current time, UTC, as ISO 8601."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def follow_text(
    read: Callable[[], str], job: Callable[[], dict[str, Any]], poll_s: float
) -> Iterator[str]:
    """What `read()` adds between polls, until `job()` is no longer active; `read` returns the
    whole text (a Ray job's log comes whole from its API). Polls are at least MIN_POLL_S apart."""
    poll_s = poll_interval(poll_s)
    shown = 0
    while True:
        active = job()["status"] in ACTIVE
        text = read()
        if len(text) > shown:
            yield text[shown:]
            shown = len(text)
        if not active:
            return
        time.sleep(poll_s)


def decode(row: sqlite3.Row) -> dict[str, Any]:
    """A job row with its JSON columns decoded."""
    return {
        **dict(row),
        "command": json.loads(row["command"]),
        "resources": json.loads(row["resources"]),
        "devices": json.loads(row["devices"]),
    }


def _note_runner_died(job: sqlite3.Row) -> None:
    """Say in the job's log that its runner died, and end the stage it left behind: a process
    group outlives its leader's pid, so the pid cannot have been reused while it runs."""
    left = process_started(job["pid"]) is None and group_alive(job["pid"])
    if left:
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(job["pid"], signal.SIGTERM)
    note = f"kollm: job {job['id']}: its runner (pid {job['pid']}) died; marked failed"
    note += " and its stage ended\n" if left else "\n"
    with suppress(OSError), Path(job["log_path"]).open("a", encoding="utf-8") as log:
        log.write(note)


class LocalExecutor:
    def __init__(
        self,
        home: Path | str | None = None,
        max_running: int = 2,
        inventory: Inventory | None = None,
    ) -> None:
        self.jobs = JobTable(home)
        self.home, self.db = self.jobs.home, self.jobs.path
        self.max_running = max_running
        self._inventory = inventory

    @property
    def node(self) -> Inventory:
        """This machine as a one-node inventory."""
        inventory = self._inventory or local_inventory()
        return Inventory(nodes=inventory.nodes[:1])

    def _candidates(self, spec: JobSpec) -> list[int]:
        """CUDA indexes of the cards big enough for the job; InventoryError if too few exist."""
        need = planned_card_gib(spec)
        node = self.node
        node.check(spec.cpus, spec.gpus, spec.memory_gib, need)
        return [i for i, _card, gib in node.nodes[0].devices() if gib >= need]

    def submit(self, spec: JobSpec) -> int:
        """Queue the job and start its detached runner; nothing is queued if the job cannot run."""
        try:
            candidates = self._candidates(spec)
        except InventoryError as err:
            raise JobError(str(err)) from err
        resources = {**spec.resources(), "candidate_devices": candidates}
        command = stage_command(spec, sys.executable)
        job_id = self.record(spec.stage, command, "local", resources)
        runner = [sys.executable, "-m", "kollm.cluster.jobs", "RUN", str(job_id)]
        runner += [str(self.home), str(self.max_running)]
        with Path(self.get(job_id)["log_path"]).open("ab") as out:
            proc = subprocess.Popen(
                runner,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                stdin=subprocess.DEVNULL,
            )
        self.update(job_id, pid=proc.pid, runner_started=process_started(proc.pid))
        return job_id

    def record(
        self, stage: str, command: list[str], executor: str, resources: dict[str, Any], **more: Any
    ) -> int:
        """Add a queued job to the table; its log goes to HOME/jobs/ID.log."""
        job_id = self.jobs.insert(
            {
                "stage": stage,
                "command": json.dumps(command),
                "executor": executor,
                "resources": json.dumps(resources),
                "status": "queued",
                "submitted_at": utc_now(),
                "log_path": "",
            }
        )
        log = self.home / "jobs" / f"{job_id}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        self.update(job_id, log_path=str(log), **more)
        return job_id

    def update(self, job_id: int, **fields: Any) -> None:
        self.jobs.update(job_id, **fields)

    def get(self, job_id: int) -> dict[str, Any]:
        with closing(self.jobs.connect()) as conn:
            self._reconcile(conn, job_id)
            row = self.jobs.get(job_id, conn)
        if row is None:
            raise JobError(f"no job {job_id}")
        return decode(row)

    def list(self) -> list[dict[str, Any]]:
        with closing(self.jobs.connect()) as conn:
            self._reconcile(conn)
        return [decode(r) for r in self.jobs.rows()]

    def _reconcile(self, conn: sqlite3.Connection, job_id: int | None = None) -> None:
        """Mark failed the running local jobs whose runner died; their log says so, and what
        the runner left of its stage (its process group) is ended, so no card stays in use
        by a job nobody tracks. A job without a recorded pid is left as it is."""
        for job in self.jobs.running_local(conn, with_pid=True, job_id=job_id):
            if runner_alive(job):
                continue
            if self.jobs.fail_running(conn, job["id"], job["pid"], utc_now()):
                _note_runner_died(job)

    def logs(self, job_id: int) -> str:
        path = Path(self.get(job_id)["log_path"])
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def follow(self, job_id: int, poll_s: float = 0.5) -> Iterator[str]:
        """The job's log as it grows, until the job ends: each poll reads only what was
        appended, at least MIN_POLL_S apart."""
        tail = LogTail(self.get(job_id)["log_path"])
        poll_s = poll_interval(poll_s)
        while True:
            active = self.get(job_id)["status"] in ACTIVE
            while text := tail.read():
                yield text
            if not active:
                return
            time.sleep(poll_s)

    def stop(self, job_id: int) -> dict[str, Any]:
        """End the job's runner and every process under it."""
        job = self.get(job_id)
        if job["status"] in ACTIVE and job["pid"]:
            self.update(job_id, status="stopped", finished_at=utc_now())
            for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
                with suppress(ProcessLookupError):
                    os.killpg(job["pid"], sig)
                deadline = time.monotonic() + grace
                while group_alive(job["pid"]) and time.monotonic() < deadline:
                    time.sleep(0.1)
                if not group_alive(job["pid"]):
                    break
        return self.get(job_id)

    def wait_for(self, job_id: int, status: str, timeout_s: float = 60) -> dict[str, Any]:
        """Block until the job reaches `status`; TimeoutError otherwise."""
        deadline = time.monotonic() + timeout_s
        while (job := self.get(job_id))["status"] != status:
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is {job['status']}, not {status}")
            time.sleep(0.2)
        return job

    def wait(self, job_id: int, timeout_s: float = 600) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while self.get(job_id)["status"] in ACTIVE:
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {self.get(job_id)['status']}")
            time.sleep(0.2)
        return self.get(job_id)

    # --- the runner, in its own process session --------------------------------------------

    def _claim_slot(self, job_id: int) -> bool:
        """Mark the job running if fewer than `max_running` run and its cards are free; False
        while it must wait."""
        with closing(self.jobs.connect()) as conn:
            conn.execute("BEGIN IMMEDIATE")
            self._reconcile(conn)  # a dead runner's job holds no slot
            running = [decode(r) for r in self.jobs.running_local(conn)]
            job = decode(self.jobs.get(job_id, conn))
            earlier = self.jobs.queued_before(conn, job_id)  # first in, first out
            if any(pid and group_alive(pid) for pid in earlier):
                conn.execute("COMMIT")
                return False
            busy = {d for other in running for d in other["devices"]}
            free = [d for d in job["resources"].get("candidate_devices", []) if d not in busy]
            wanted = job["resources"].get("gpus", 0)
            if job["status"] != "queued" or len(running) >= self.max_running or len(free) < wanted:
                conn.execute("COMMIT")
                return job["status"] != "queued"
            self.jobs.update(  # this runner's own pid and start time, whoever recorded them first
                job_id,
                conn,
                status="running",
                started_at=utc_now(),
                devices=json.dumps(free[:wanted]),
                pid=os.getpid(),
                runner_started=process_started(os.getpid()),
            )
            conn.execute("COMMIT")
            return True

    def run(self, job_id: int) -> int:
        while not self._claim_slot(job_id):
            time.sleep(0.5)
        job = self.get(job_id)
        if job["status"] != "running":  # stopped while it waited
            return 0
        env = dict(os.environ)
        if job["resources"].get("gpus"):
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(d) for d in job["devices"])
            # the runner's stdout is the job's log: say where the job was placed
            sys.stdout.write(
                f"kollm job {job_id}: CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']}\n"
            )
            sys.stdout.flush()
        code = subprocess.call(job["command"], stdin=subprocess.DEVNULL, env=env)
        if self.get(job_id)["status"] == "running":
            self.update(
                job_id,
                status="succeeded" if code == 0 else "failed",
                exit_code=code,
                finished_at=utc_now(),
            )
        return code


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "RUN":
    sys.exit(LocalExecutor(sys.argv[3], int(sys.argv[4])).run(int(sys.argv[2])))
