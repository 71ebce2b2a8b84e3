"""`kollm jobs submit|list|status|logs|stop`."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.table import Table

from kollm.cli.common import (
    InventoryOpt,
    OverridesArg,
    RayAddressOpt,
    RayTokenOpt,
    RecipeArg,
    _load,
    app,
    console,
    fail,
)
from kollm.cli.plan import _inventory

jobs_app = typer.Typer(
    help="Jobs: recipe stages run in the background, on this machine or on a Ray cluster.",
    no_args_is_help=True,
)
app.add_typer(jobs_app, name="jobs")


def _job_executor(job_id: int | None = None, **options: Any):
    """The executor of an existing job (the one its row names), or of a new one."""
    from kollm.cluster.jobs import JobError, LocalExecutor
    from kollm.cluster.ray_jobs import RayExecutor

    local = LocalExecutor(
        max_running=options.get("max_running", 2), inventory=options.get("inventory")
    )
    try:
        row = local.get(job_id) if job_id is not None else None
    except JobError as err:
        fail(str(err))
    address = row["address"] if row is not None else options.get("address")
    if (row is not None and row["executor"] == "ray") or options.get("executor") == "ray":
        if not address:
            fail("--executor ray needs --address http://HOST:8265 (the Ray dashboard)")
        keep = ("token", "python", "working_dir", "inventory")
        return RayExecutor(address, **{k: v for k, v in options.items() if k in keep})
    return local


@jobs_app.command("submit")
def jobs_submit(
    stage: Annotated[str, typer.Argument(help="train, eval, tune, loop, run or data.")],
    recipe: RecipeArg,
    overrides: OverridesArg = None,
    cpus: Annotated[float, typer.Option(help="CPUs the job needs.")] = 1,
    gpus: Annotated[int, typer.Option(help="GPUs the job needs.")] = 0,
    memory_gib: Annotated[float, typer.Option(help="Memory the job needs (GiB).")] = 0.0,
    executor: Annotated[str, typer.Option(help="local (this machine) or ray.")] = "local",
    address: RayAddressOpt = None,
    token: RayTokenOpt = None,
    python: Annotated[str, typer.Option(help="The Python the Ray job runs.")] = "python",
    working_dir: Annotated[
        str | None, typer.Option(help="A directory Ray uploads for the job.")
    ] = None,
    inventory: InventoryOpt = None,
    max_running: Annotated[int, typer.Option(help="Jobs running at once on this machine.")] = 2,
) -> None:
    """Start a recipe stage in the background; it outlives this command."""
    from kollm.cluster.jobspec import JobError, JobSpec

    if executor not in ("local", "ray"):
        fail(f"--executor: expected local or ray, got {executor!r}")
    _load(recipe, overrides)
    options = {"executor": executor, "address": address, "token": token, "python": python}
    options.update(working_dir=working_dir, inventory=_inventory(inventory))
    try:
        spec = JobSpec(stage, str(recipe), overrides or [], cpus, gpus, memory_gib)
        job_id = _job_executor(max_running=max_running, **options).submit(spec)
    except JobError as err:
        fail(str(err))
    console.print(f"job {job_id} submitted; follow it with: kollm jobs logs {job_id} --follow")
    if line := _ray_train_line(spec, options["inventory"]):
        console.print(line)


def _ray_train_line(spec, inventory) -> str | None:
    """Where a `launcher: ray` run's workers go, on the inventory's nodes when one is given."""
    from kollm.cluster.inventory import InventoryError
    from kollm.cluster.jobspec import placement_text, ray_placement, ray_workers

    if ray_workers(spec) is None:
        return None
    recipe = spec.load()
    rows = []
    if inventory is not None:
        try:
            rows = ray_placement(recipe, inventory)
        except InventoryError as err:
            return f"ray train: {err}"
    return placement_text(recipe, rows)


@jobs_app.command("list")
def jobs_list() -> None:
    """Every job with its status."""
    table = Table(title="Jobs")
    for column in ("id", "stage", "executor", "status", "submitted", "exit", "command"):
        table.add_column(column)
    for job in _job_executor().list():
        job = _refreshed(job)
        table.add_row(
            str(job["id"]),
            job["stage"],
            job["executor"] + (f" {job['address']}" if job["address"] else ""),
            job["status"],
            job["submitted_at"],
            str(job["exit_code"] if job["exit_code"] is not None else "-"),
            " ".join(job["command"][job["command"].index("kollm") + 1 :]),
        )
    console.print(table)


def _refreshed(job: dict[str, Any]) -> dict[str, Any]:
    """A Ray job's row with its status asked of Ray; as stored when the cluster cannot answer."""
    from kollm.cluster.jobs import ACTIVE
    from kollm.cluster.jobspec import JobError
    from kollm.cluster.ray_jobs import RayExecutor

    if job["executor"] != "ray" or job["status"] not in ACTIVE:
        return job
    try:
        return RayExecutor(job["address"]).get(job["id"])
    except JobError:
        return job


def _on_job(job_id: int, action: Callable[[Any], Any]) -> Any:
    from kollm.cluster.jobspec import JobError

    try:
        return action(_job_executor(job_id))
    except JobError as err:
        fail(str(err))


@jobs_app.command("status")
def jobs_status(job_id: Annotated[int, typer.Argument(help="Job id.")]) -> None:
    """One job as JSON (its status asked of Ray for a Ray job)."""
    console.print_json(json.dumps(_on_job(job_id, lambda ex: ex.get(job_id))))


@jobs_app.command("logs")
def jobs_logs(
    job_id: Annotated[int, typer.Argument(help="Job id.")],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Stream until the job ends.")
    ] = False,
) -> None:
    """The job's output so far, or all of it as it comes with --follow."""
    if not follow:
        print(_on_job(job_id, lambda ex: ex.logs(job_id)), end="")
        return

    def stream(executor: Any) -> None:
        for chunk in executor.follow(job_id):
            print(chunk, end="", flush=True)

    _on_job(job_id, stream)


@jobs_app.command("stop")
def jobs_stop(job_id: Annotated[int, typer.Argument(help="Job id.")]) -> None:
    """End a job and its child processes."""
    job = _on_job(job_id, lambda ex: ex.stop(job_id))
    console.print(f"job {job_id}: {job['status']}")
