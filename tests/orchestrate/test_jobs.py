import pytest

from kollm.orchestrate.jobs import JobError, LocalExecutor, group_alive


def test_a_job_runs_detached_and_is_tracked(tiny_recipe, tmp_path):
    executor = LocalExecutor(tmp_path / "home", max_running=1)
    job_id = executor.submit("train", str(tiny_recipe), ["train.max_steps=3"])
    job = executor.wait(job_id, 300)
    assert job["status"] == "succeeded" and job["exit_code"] == 0
    assert "sft on scratch: 3 steps" in executor.logs(job_id)
    with pytest.raises(JobError, match="no job 99"):
        executor.get(99)
    with pytest.raises(JobError, match="stage: expected one of"):
        executor.submit("deploy", str(tiny_recipe))


def test_the_queue_holds_jobs_and_stop_ends_a_job_and_its_children(tiny_recipe, tmp_path):
    import time

    executor = LocalExecutor(tmp_path / "home", max_running=1)
    long_job = executor.submit(
        "train", str(tiny_recipe), ["train.max_steps=100000", "train.save_steps=100000"]
    )
    waiting = executor.submit("train", str(tiny_recipe), ["train.max_steps=2"])
    deadline = time.monotonic() + 120
    while executor.get(long_job)["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    time.sleep(1.0)
    assert executor.get(waiting)["status"] == "queued"  # one slot, taken
    pid = executor.get(long_job)["pid"]
    assert executor.stop(long_job)["status"] == "stopped"
    assert not group_alive(pid)  # the runner and the training under it are gone
    assert executor.wait(waiting, 300)["status"] == "succeeded"


def test_jobs_commands(tiny_recipe, tmp_path, monkeypatch):
    import json

    from typer.testing import CliRunner

    from kollm.cli import app

    monkeypatch.setenv("KOLLM_HOME", str(tmp_path / "home"))
    runner = CliRunner()
    submitted = runner.invoke(app, ["jobs", "submit", "data", str(tiny_recipe), "--cpus", "1"])
    assert submitted.exit_code == 0 and "job 1 submitted" in submitted.output
    LocalExecutor(tmp_path / "home").wait(1, 120)
    status = json.loads(runner.invoke(app, ["jobs", "status", "1"]).output)
    assert status["status"] == "succeeded" and status["resources"]["cpus"] == 1
    assert "Data stage" in runner.invoke(app, ["jobs", "logs", "1"]).output
    assert runner.invoke(app, ["jobs", "status", "7"]).exit_code == 2
