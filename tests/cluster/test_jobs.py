import pytest

from kollm.cluster.jobs import JobError, JobSpec, LocalExecutor, group_alive


def test_a_job_runs_detached_and_is_tracked(tiny_recipe, tmp_path):
    executor = LocalExecutor(tmp_path / "home", max_running=1)
    job_id = executor.submit(JobSpec("train", str(tiny_recipe), ["train.max_steps=3"]))
    job = executor.wait(job_id, 300)
    assert job["status"] == "succeeded" and job["exit_code"] == 0
    assert job["runner_started"] > 0  # when the runner started, to tell a reused pid
    assert "sft on scratch: 3 steps" in executor.logs(job_id)
    with pytest.raises(JobError, match="no job 99"):
        executor.get(99)
    with pytest.raises(JobError, match="stage: expected one of"):
        JobSpec("deploy", str(tiny_recipe))


def test_the_queue_holds_jobs_and_stop_ends_a_job_and_its_children(tiny_recipe, tmp_path):
    import time

    executor = LocalExecutor(tmp_path / "home", max_running=1)
    long_job = executor.submit(
        JobSpec("train", str(tiny_recipe), ["train.max_steps=100000", "train.save_steps=100000"])
    )
    waiting = executor.submit(JobSpec("train", str(tiny_recipe), ["train.max_steps=2"]))
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


def _two_t4s(tmp_path):
    from kollm.cluster.inventory import load_inventory

    path = tmp_path / "inventory.yaml"
    path.write_text(
        "nodes:\n  - name: local\n    cpus: 2\n    memory_gib: 24\n"
        "    gpus:\n      - {card: T4, count: 2}\n"
    )
    return load_inventory(path)


def test_gpu_jobs_are_placed_on_free_cards_and_wait_for_one(tiny_recipe, tmp_path):
    executor = LocalExecutor(tmp_path / "home", max_running=3, inventory=_two_t4s(tmp_path))
    slow = ["train.max_steps=100000", "train.save_steps=100000"]
    first = executor.submit(JobSpec("train", str(tiny_recipe), slow, gpus=1))
    second = executor.submit(JobSpec("train", str(tiny_recipe), slow, gpus=1))
    third = executor.submit(JobSpec("train", str(tiny_recipe), ["train.max_steps=2"], gpus=1))
    try:
        for job_id in (first, second):
            executor.wait_for(job_id, "running", 120)
        devices = sorted(executor.get(j)["devices"] for j in (first, second))
        assert devices == [[0], [1]]  # one card each
        assert executor.get(third)["status"] == "queued"  # a free slot, but no free card
        executor.stop(first)
        assert executor.wait(third, 300)["status"] == "succeeded"
        assert executor.get(third)["devices"] == executor.get(first)["devices"]
        assert "CUDA_VISIBLE_DEVICES=" in executor.logs(third)
    finally:
        for job_id in (first, second, third):
            executor.stop(job_id)


def test_a_job_the_inventory_cannot_hold_is_refused_and_not_queued(tiny_recipe, tmp_path):
    executor = LocalExecutor(tmp_path / "home", inventory=_two_t4s(tmp_path))
    with pytest.raises(JobError, match=r"3 GPUs \(most on a node: 2\)"):
        executor.submit(JobSpec("train", str(tiny_recipe), gpus=3))
    with pytest.raises(JobError, match=r"8 CPUs \(most on a node: 2\)"):
        executor.submit(JobSpec("train", str(tiny_recipe), cpus=8))
    # the planner says a full fine-tune of a 70B-shaped scratch model needs more than a T4
    big = ["model.hidden_size=8192", "model.layers=80", "model.heads=64"]
    big.append("model.intermediate_size=28672")
    with pytest.raises(JobError, match="GPUs of at least"):
        executor.submit(JobSpec("train", str(tiny_recipe), big, gpus=2))
    assert executor.list() == []


def test_an_inventory_with_an_unknown_card_names_it(tmp_path):
    from kollm.cluster.inventory import InventoryError, load_inventory

    path = tmp_path / "inventory.yaml"
    path.write_text("nodes:\n  - name: a\n    cpus: 4\n    memory_gib: 8\n    gpus: [{card: X9}]\n")
    with pytest.raises(InventoryError, match=r"nodes\.0\.gpus\.0.*unknown card 'X9'"):
        load_inventory(path)
    path.write_text("nodes:\n  - name: a\n    cpus: 4\n    memory_gib: 8\n")
    path.write_text(path.read_text() + "    gpus: [{card: X9, memory_gib: 20}]\n")
    assert load_inventory(path).cards() == {"a/X9": 20}


def test_a_train_job_with_torchrun_trains_on_two_processes(tiny_recipe, tmp_path):
    executor = LocalExecutor(tmp_path / "home")
    launch = ["train.distributed.launcher=torchrun", "train.distributed.num_processes=2"]
    spec = JobSpec("train", str(tiny_recipe), [*launch, "train.max_steps=2"])
    job_id = executor.submit(spec)
    assert executor.get(job_id)["command"][1:4] == [
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
    ]
    job = executor.wait(job_id, 300)
    assert job["status"] == "succeeded", executor.logs(job_id)
    assert "on 2 processes: 2 steps" in executor.logs(job_id)


def test_accelerate_commands_carry_the_recipes_strategy(tiny_recipe):
    from kollm.cluster.jobspec import stage_command

    base = ["train.distributed.launcher=accelerate", "train.distributed.num_processes=4"]
    fsdp = stage_command(
        JobSpec("train", str(tiny_recipe), [*base, "train.distributed.strategy=fsdp"])
    )
    assert fsdp[:7] == [
        "python",
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        "4",
        "--use_fsdp",
        "-m",
    ]
    ds = [
        *base,
        "train.distributed.strategy=deepspeed",
        "train.distributed.deepspeed_config=z3.json",
    ]
    command = stage_command(JobSpec("run", str(tiny_recipe), ds))
    assert command[5:8] == ["--use_deepspeed", "--deepspeed_config_file", "z3.json"]
    assert command[8:11] == ["-m", "kollm", "run"]
    assert stage_command(JobSpec("eval", str(tiny_recipe), base))[:4] == [
        "python",
        "-m",
        "kollm",
        "eval",
    ]


def _bytes_read() -> int:
    """What this process has read through read(2) and its kin."""
    with open("/proc/self/io") as io:
        return int(next(line for line in io if line.startswith("rchar:")).split()[1])


def test_follow_reads_only_what_was_appended_and_polls_0_do_not_spin(tmp_path, monkeypatch):
    import threading
    import time

    executor = LocalExecutor(tmp_path / "home")
    job_id = executor.record("train", ["kollm", "train", "r.yaml"], "local", {"gpus": 0})
    executor.update(job_id, status="running")
    log = tmp_path / "home" / "jobs" / f"{job_id}.log"
    big = "학습 단계 0 " * 400_000 + "\n"  # 6 MB of Korean, split across reads mid-character
    log.write_text(big, encoding="utf-8")
    polls = []
    real_get = executor.get
    monkeypatch.setattr(executor, "get", lambda i: polls.append(1) or real_get(i))

    def finish():
        for step in (1, 2, 3):
            time.sleep(0.3)
            with log.open("a", encoding="utf-8") as out:
                out.write(f"학습 단계 {step}\n")
        time.sleep(0.3)
        executor.update(job_id, status="succeeded", exit_code=0)

    threading.Thread(target=finish).start()
    before = _bytes_read()
    text = "".join(executor.follow(job_id, poll_s=0))
    read = _bytes_read() - before
    assert text == log.read_text(encoding="utf-8")
    assert len(polls) < 30  # about 1.2 s at the 0.2-s floor, not a busy loop
    assert read < 1.5 * len(big.encode())  # the log once, then only what was appended


def _started(pid: int) -> int:
    """The process's start time, /proc/PID/stat field 22."""
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[19])


def _running(executor, pid, started) -> int:
    job_id = executor.record("train", ["kollm", "train", "r.yaml"], "local", {"gpus": 0})
    executor.update(job_id, status="running", pid=pid, runner_started=started)
    return job_id


def test_running_jobs_whose_runner_died_are_failed_and_free_their_slots(tmp_path):
    import os
    import subprocess

    executor = LocalExecutor(tmp_path / "home", max_running=2)
    gone = subprocess.Popen(["true"])
    gone.wait()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        dead = _running(executor, gone.pid, 12345)
        # this test's own pid, recorded with another start time: a runner's pid reused since
        reused = _running(executor, os.getpid(), _started(os.getpid()) + 1)
        alive = _running(executor, sleeper.pid, _started(sleeper.pid))
        queued = executor.record("data", ["kollm", "data", "r.yaml"], "local", {"gpus": 0})
        assert executor._claim_slot(queued)  # two of the three running jobs hold no slot
        status = {job["id"]: job["status"] for job in executor.list()}
        assert [status[j] for j in (dead, reused, alive, queued)] == [
            "failed",
            "failed",
            "running",
            "running",
        ]
        assert f"runner (pid {gone.pid}) died; marked failed" in executor.logs(dead)
        assert sleeper.poll() is None  # a live runner is left alone
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_dead_runners_leftover_stage_is_ended(tmp_path):
    import signal
    import subprocess
    import time

    executor = LocalExecutor(tmp_path / "home")
    runner = subprocess.Popen(["sh", "-c", "sleep 60 & wait"], start_new_session=True)
    job_id = _running(executor, runner.pid, _started(runner.pid))
    deadline = time.monotonic() + 10
    while len(_group(runner.pid)) < 2:  # the shell and its `sleep`
        assert time.monotonic() < deadline
        time.sleep(0.05)
    runner.send_signal(signal.SIGKILL)  # the runner dies; its `sleep` stage lives on
    runner.wait()
    assert group_alive(runner.pid)
    assert executor.get(job_id)["status"] == "failed"
    while group_alive(runner.pid):  # the stage nobody tracks is ended, not left on its card
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert "and its stage ended" in executor.logs(job_id)


def _group(pgid: int) -> list[int]:
    import os

    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(entry))
    return found


def test_a_ray_train_job_is_its_own_driver_and_says_where_its_workers_go(tiny_recipe, repo):
    from kollm.cluster.inventory import load_inventory
    from kollm.cluster.jobspec import placement_text, ray_placement, ray_workers, stage_command

    ray = ["train.distributed.launcher=ray", "train.distributed.num_workers=6"]
    ray += ["train.distributed.use_gpu=true"]
    spec = JobSpec("run", str(tiny_recipe), ray)
    # Ray Train starts the workers: the job is the plain command, under no other launcher
    assert stage_command(spec)[:4] == ["python", "-m", "kollm", "run"]
    assert ray_workers(spec).num_workers == 6
    recipe = spec.load()
    rows = ray_placement(recipe, load_inventory(repo / "examples" / "inventory.yaml"))
    assert [(r["node"], r["workers"]) for r in rows] == [("gpu-01", 4), ("gpu-02", 2)]
    line = placement_text(recipe, rows)
    assert line.startswith("ray train: 6 workers (ddp), each 1 GPU(s) of ")
    assert line.endswith("on gpu-01 4 (4 x A100-80GB), gpu-02 2 (2 x L4)")


def test_kollm_run_under_torchrun_prepares_evaluates_and_registers_on_rank_0_only(tiny_recipe):
    from kollm.registry import Registry

    launch = ["train.distributed.launcher=torchrun", "train.distributed.num_processes=2"]
    overrides = [*launch, "train.max_steps=2", "eval.max_samples=2"]
    executor = LocalExecutor()
    job_id = executor.submit(JobSpec("run", str(tiny_recipe), overrides))
    job = executor.wait(job_id, 300)
    assert job["status"] == "succeeded", executor.logs(job_id)
    assert [v.version for v in Registry().list("tiny")] == [1]
    logs = executor.logs(job_id)
    # rank 1 waited for rank 0's data, trained beside it, then stopped
    assert logs.count("data: skipped (unchanged)") == 1 and logs.count("data: done") == 1
    assert logs.count("eval: starting") == 1 and logs.count("register: starting") == 1
