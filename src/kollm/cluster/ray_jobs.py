"""The Ray executor: the same job spec, submitted to a Ray cluster through the Ray Jobs API.

The job table in the SQLite store keeps a row for every Ray job too (executor `ray`, the
dashboard address, Ray's submission id), so `kollm jobs list|status|logs|stop` work the same for
both executors; the row's status is refreshed from Ray while the job is active. The entrypoint is
the local executor's command line run by the cluster's `python`, so the recipe, its data and
KOLLM_HOME must be paths the cluster's nodes see (a shared filesystem), as with any Ray job; a
`working_dir` is uploaded by Ray when given. A train or run job whose recipe sets
`launcher: ray` is the driver of a Ray Train run: its entrypoint holds no GPU, and its workers
(checked against the inventory when one is given) are placed by Ray. Ray's token auth is
passed through: a token given here (or RAY_AUTH_TOKEN) goes out as `Authorization: Bearer
...` on every call.
"""

from __future__ import annotations

import os
import shlex
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kollm.cluster.inventory import Inventory, InventoryError
from kollm.cluster.jobs import ACTIVE, LocalExecutor, follow_text, utc_now
from kollm.cluster.jobspec import JobError, JobSpec, ray_placement, ray_workers, stage_command

GIB = 1024**3
STATUS = {  # Ray's JobStatus -> the job table's status
    "PENDING": "queued",
    "RUNNING": "running",
    "SUCCEEDED": "succeeded",
    "FAILED": "failed",
    "STOPPED": "stopped",
}
# KOLLM_DATABASE_URL: a job on another machine records into the same (PostgreSQL) store
PASSED_ENV = (
    "KOLLM_HOME",
    "KOLLM_DATABASE_URL",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_DATASETS_OFFLINE",
)
# A cluster just started by `ray start` answers 500 "No available agent" until its dashboard
# agent has registered (seconds, longer on a loaded machine): that answer is retried this long.
AGENT_WAIT_S = 60.0
NO_AGENT = "No available agent"


def ray_client(address: str, token: str | None = None):
    """A JobSubmissionClient for `address`; JobError naming the address if it cannot be reached."""
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError as err:
        raise JobError("the ray executor needs Ray: pip install 'kollm[ray]'") from err
    token = token or os.environ.get("RAY_AUTH_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        return JobSubmissionClient(address, headers=headers)
    except (ConnectionError, ValueError, RuntimeError) as err:
        raise JobError(f"--address {address}: cannot reach the Ray cluster: {err}") from err


class RayExecutor:
    def __init__(
        self,
        address: str,
        home: Path | str | None = None,
        token: str | None = None,
        python: str = "python",
        working_dir: str | None = None,
        inventory: Inventory | None = None,
    ) -> None:
        self.table = LocalExecutor(home)
        self.address, self.token, self.python = address, token, python
        self.working_dir, self.inventory = working_dir, inventory
        self.agent_wait_s = AGENT_WAIT_S

    def _client(self):
        return ray_client(self.address, self.token)

    def submit(self, spec: JobSpec) -> int:
        """Submit the spec's stage to Ray; nothing is recorded if the cluster cannot take it."""
        workers = ray_workers(spec)
        if self.inventory is not None:
            try:
                self.inventory.check(spec.cpus, 0 if workers else spec.gpus, spec.memory_gib)
                if workers is not None:  # the driver needs no GPU; Ray places its workers
                    ray_placement(spec.load(), self.inventory)
            except InventoryError as err:
                raise JobError(str(err)) from err
        client = self._client()
        command = stage_command(spec, self.python)
        env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
        runtime_env: dict[str, Any] = {"env_vars": env}
        if self.working_dir:
            runtime_env["working_dir"] = self.working_dir
        job_id = self.table.record(
            spec.stage, command, "ray", spec.resources(), address=self.address
        )
        try:
            submission = self._submit(
                client,
                entrypoint=shlex.join(command),
                submission_id=f"kollm-{job_id}-{uuid.uuid4().hex[:8]}",
                runtime_env=runtime_env,
                entrypoint_num_cpus=spec.cpus,
                entrypoint_num_gpus=0 if workers else spec.gpus,
                entrypoint_memory=int(spec.memory_gib * GIB),
                metadata={"kollm_job": str(job_id), "stage": spec.stage},
            )
        except Exception as err:  # Ray raises RuntimeError with the HTTP body
            self.table.update(job_id, status="failed", finished_at=utc_now())
            raise JobError(f"Ray refused job {job_id}: {err}") from err
        self.table.update(job_id, external_id=submission)
        return job_id

    def _submit(self, client, **job: Any) -> str:
        """client.submit_job, retried while the cluster has no job agent yet (see AGENT_WAIT_S)."""
        from tenacity import retry, retry_if_exception, stop_after_delay, wait_fixed

        @retry(
            retry=retry_if_exception(lambda err: NO_AGENT in str(err)),
            wait=wait_fixed(1),
            stop=stop_after_delay(self.agent_wait_s),
            reraise=True,
        )
        def submit() -> str:
            return client.submit_job(**job)

        return submit()

    def get(self, job_id: int) -> dict[str, Any]:
        """The job's row, its status refreshed from Ray while it is active."""
        job = self.table.get(job_id)
        if job["status"] not in ACTIVE or not job["external_id"]:
            return job
        info = self._client().get_job_info(job["external_id"])
        status = STATUS.get(str(info.status.value), job["status"])
        if status != job["status"]:
            fields: dict[str, Any] = {"status": status}
            if status == "running" and not job["started_at"]:
                fields["started_at"] = utc_now()
            if status not in ACTIVE:
                fields.update(finished_at=utc_now(), exit_code=info.driver_exit_code)
                self._save_log(job)
            self.table.update(job_id, **fields)
        return self.table.get(job_id)

    def _save_log(self, job: dict[str, Any]) -> None:
        """Keep the finished job's log on this machine, written whole under a temp name."""
        text = self._client().get_job_logs(job["external_id"])
        path = Path(job["log_path"])
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)

    def logs(self, job_id: int) -> str:
        job = self.get(job_id)
        if job["status"] in ACTIVE:
            return self._client().get_job_logs(job["external_id"])
        return self.table.logs(job_id)

    def follow(self, job_id: int, poll_s: float = 1.0) -> Iterator[str]:
        """The job's log as it grows, until the job ends."""
        yield from follow_text(lambda: self.logs(job_id), lambda: self.get(job_id), poll_s)

    def stop(self, job_id: int) -> dict[str, Any]:
        job = self.get(job_id)
        if job["status"] in ACTIVE:
            self._client().stop_job(job["external_id"])
        return self.wait(job_id, 60)

    def wait(self, job_id: int, timeout_s: float = 600) -> dict[str, Any]:
        import time

        deadline = time.monotonic() + timeout_s
        while (job := self.get(job_id))["status"] in ACTIVE:
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']}")
            time.sleep(0.5)
        return job
