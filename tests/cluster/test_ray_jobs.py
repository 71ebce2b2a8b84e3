import json
import sys
import time

import pytest
from typer.testing import CliRunner

from kollm.cli import app
from kollm.cluster.jobs import LocalExecutor
from kollm.registry import Registry


def test_a_training_job_runs_on_a_ray_cluster_and_registers_its_model(
    ray_cluster, tiny_recipe, tmp_path, monkeypatch
):
    home = tmp_path / "home"
    monkeypatch.setenv("KOLLM_HOME", str(home))  # passed to the job's environment
    runner = CliRunner()
    submit = ["jobs", "submit", "run", str(tiny_recipe), "train.max_steps=3"]
    submit += ["--executor", "ray", "--address", ray_cluster.dashboard, "--python", sys.executable]
    submitted = runner.invoke(app, submit)
    assert submitted.exit_code == 0, submitted.output
    assert "job 1 submitted" in submitted.output

    followed = runner.invoke(app, ["jobs", "logs", "1", "--follow"])  # returns when it ends
    assert followed.exit_code == 0
    assert "sft on scratch: 3 steps" in followed.output
    status = json.loads(runner.invoke(app, ["jobs", "status", "1"]).output)
    assert status["status"] == "succeeded" and status["exit_code"] == 0
    assert status["executor"] == "ray" and status["external_id"].startswith("kollm-1-")
    assert Registry(home).get("tiny").version == 1  # registered by the job on the cluster
    assert "ray" in runner.invoke(app, ["jobs", "list"]).output
    assert "sft on scratch" in LocalExecutor(home).logs(1)  # the log is kept here


def test_an_unreachable_ray_address_is_named_and_nothing_is_queued(tiny_recipe, tmp_path):
    from kollm.cluster.jobs import JobError, JobSpec
    from kollm.cluster.ray_jobs import RayExecutor

    result = CliRunner().invoke(
        app,
        ["jobs", "submit", "train", str(tiny_recipe), "--executor", "ray"],
        env={"KOLLM_HOME": str(tmp_path / "home")},
    )
    assert result.exit_code == 2 and "--address" in result.output
    executor = RayExecutor("http://127.0.0.1:1", tmp_path / "home")
    try:
        executor.submit(JobSpec("train", str(tiny_recipe)))
    except JobError as err:
        assert "--address http://127.0.0.1:1: cannot reach the Ray cluster" in str(err)
    else:
        raise AssertionError("submitted to a cluster that is not there")
    assert executor.table.list() == []


def test_a_ray_job_larger_than_the_inventory_is_refused_before_any_call(tiny_recipe, tmp_path):
    from kollm.cluster.inventory import Inventory, Node
    from kollm.cluster.jobs import JobError, JobSpec
    from kollm.cluster.ray_jobs import RayExecutor

    inventory = Inventory(nodes=[Node(name="n1", cpus=8, memory_gib=64, gpus=[{"card": "L4"}])])
    executor = RayExecutor("http://127.0.0.1:1", tmp_path / "home", inventory=inventory)
    try:
        executor.submit(JobSpec("train", str(tiny_recipe), gpus=2))
    except JobError as err:
        assert "2 GPUs (most on a node: 1)" in str(err)
    else:
        raise AssertionError("a job larger than the inventory was submitted")
    assert executor.table.list() == []


def test_a_ray_train_run_is_refused_when_its_workers_do_not_fit_the_inventory(
    tiny_recipe, tmp_path
):
    from kollm.cluster.inventory import Inventory, Node
    from kollm.cluster.jobs import JobError, JobSpec
    from kollm.cluster.ray_jobs import RayExecutor

    nodes = [Node(name=f"n{i}", cpus=8, memory_gib=64, gpus=[{"card": "L4"}]) for i in (1, 2)]
    executor = RayExecutor(
        "http://127.0.0.1:1", tmp_path / "home", inventory=Inventory(nodes=nodes)
    )
    ray = ["train.distributed.launcher=ray", "train.distributed.use_gpu=true"]
    # the driver holds no GPU: its own --gpus are not asked of one node
    with pytest.raises(JobError, match=r"3 Ray workers of 1 GPUs .* the inventory holds 2"):
        executor.submit(
            JobSpec("train", str(tiny_recipe), [*ray, "train.distributed.num_workers=3"])
        )
    assert executor.table.list() == []


def test_stop_ends_a_ray_job(ray_cluster, tiny_recipe, tmp_path, monkeypatch):
    from kollm.cluster.jobs import JobSpec
    from kollm.cluster.ray_jobs import RayExecutor

    monkeypatch.setenv("KOLLM_HOME", str(tmp_path / "home"))
    executor = RayExecutor(ray_cluster.dashboard, tmp_path / "home", python=sys.executable)
    slow = ["train.max_steps=100000", "train.save_steps=100000"]
    job_id = executor.submit(JobSpec("train", str(tiny_recipe), slow))
    deadline = time.monotonic() + 120
    while executor.get(job_id)["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.5)
    job = executor.stop(job_id)
    assert job["status"] == "stopped"
    listed = CliRunner().invoke(app, ["jobs", "list"])
    assert "stopped" in listed.output


class _FlakyClient:
    """A JobSubmissionClient whose cluster has no job agent for its first `refusals` calls."""

    def __init__(self, refusals: int, message: str) -> None:
        self.refusals, self.message, self.calls = refusals, message, 0

    def submit_job(self, **job):
        self.calls += 1
        if self.calls <= self.refusals:
            raise RuntimeError(f"Request failed with status code 500: {self.message}.")
        return job["submission_id"]


def test_a_cluster_without_its_job_agent_yet_is_waited_for(tiny_recipe, tmp_path, monkeypatch):
    from kollm.cluster.jobs import JobSpec
    from kollm.cluster.ray_jobs import RayExecutor

    executor = RayExecutor("http://127.0.0.1:1", tmp_path / "home")
    flaky = _FlakyClient(2, "No available agent to submit job, please try again later.")
    monkeypatch.setattr(executor, "_client", lambda: flaky)
    job_id = executor.submit(JobSpec("train", str(tiny_recipe)))
    assert flaky.calls == 3  # two refusals while the agent registers, then accepted
    job = executor.table.get(job_id)
    assert job["status"] == "queued" and job["external_id"].startswith(f"kollm-{job_id}-")


def test_other_refusals_fail_at_once_and_the_row_says_failed(tiny_recipe, tmp_path, monkeypatch):
    from kollm.cluster.jobs import JobError, JobSpec
    from kollm.cluster.ray_jobs import RayExecutor

    executor = RayExecutor("http://127.0.0.1:1", tmp_path / "home")
    refusing = _FlakyClient(99, "entrypoint_num_gpus must be >= 0")
    monkeypatch.setattr(executor, "_client", lambda: refusing)
    try:
        executor.submit(JobSpec("train", str(tiny_recipe)))
    except JobError as err:
        assert "Ray refused job 1" in str(err) and "entrypoint_num_gpus" in str(err)
    else:
        raise AssertionError("a refused job was reported as submitted")
    assert refusing.calls == 1
    assert executor.table.get(1)["status"] == "failed"
