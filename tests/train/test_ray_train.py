"""`train.distributed.launcher: ray` on the session's local Ray cluster: two CPU workers (gloo)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from transformers import TrainerCallback

from kollm.config import load_recipe
from kollm.registry import Registry

MAX_STEPS = 6
CONTROLLER_POLL_S = 2.0  # Ray Train's health check interval


@pytest.fixture
def loopback_driver(ray_cluster, monkeypatch):
    """The cluster binds 127.0.0.1 only; a driver in this process would otherwise swap that
    address for the host's outward one (Ray read RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 too late,
    at its import), and find no GCS there."""
    monkeypatch.setattr("ray._private.ray_constants.ENABLE_RAY_CLUSTER", False)
    return ray_cluster


def _ray_overrides(cluster, local_base: Path, storage: Path, **dist) -> list[str]:
    overrides = [
        f"model.base={local_base}",
        "train.lora.enabled=true",
        f"train.max_steps={MAX_STEPS}",
        "train.save_steps=2",
        "train.logging_steps=1",
        "train.batch_size=2",
        "train.max_length=128",
        "train.distributed.launcher=ray",
        "train.distributed.num_workers=2",
        f"train.distributed.address={cluster.address}",
        f"train.distributed.storage_path={storage}",
    ]
    return overrides + [f"train.distributed.{k}={v}" for k, v in dist.items()]


def _steps(losses: list[dict]) -> list[int]:
    return [e["step"] for e in losses if "loss" in e]


def test_kollm_run_trains_lora_on_two_ray_workers_and_registers_once(
    loopback_driver, tiny_recipe, local_base, tmp_path
):
    from typer.testing import CliRunner

    from kollm.cli import app

    overrides = [*_ray_overrides(loopback_driver, local_base, tmp_path / "ray"), "eval=null"]
    run = CliRunner().invoke(app, ["run", str(tiny_recipe), *overrides], env={"COLUMNS": "200"})
    assert run.exit_code == 0, run.output
    assert f"sft on {local_base} on 2 processes: {MAX_STEPS} steps" in run.output
    recipe = load_recipe(tiny_recipe, overrides)
    assert (recipe.train_dir / "model" / "adapter_config.json").exists()
    assert _steps(_losses(recipe)) == list(range(1, MAX_STEPS + 1))
    assert [v.version for v in Registry().list(recipe.model_name)] == [1]
    # Ray kept the checkpoints in storage
    assert sorted((tmp_path / "ray" / recipe.name).glob("checkpoint_*"))


def _losses(recipe) -> list[dict]:
    from kollm.train.common import read_losses

    return read_losses(recipe.train_dir / "loss.jsonl")


class KillRankOneOnce(TrainerCallback):
    """SIGKILLs world rank 1 after step 3 (a checkpoint was stored at step 2), on the first
    attempt only: the marker file outlives the process. It waits first for Ray's controller
    to collect the step-2 report (it polls the workers every 2 s): a checkpoint reported just
    before a failure is not yet one Ray restarts from."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def on_step_end(self, args, state, control, **kwargs):
        import ray.train

        rank = ray.train.get_context().get_world_rank()
        if state.global_step == 3 and rank == 1 and not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            time.sleep(CONTROLLER_POLL_S + 2)
            os.kill(os.getpid(), signal.SIGKILL)
        return control


def test_a_killed_worker_restarts_the_group_from_its_last_checkpoint(
    loopback_driver, tiny_recipe, local_base, tmp_path
):
    from kollm.train import ray_launcher

    storage = tmp_path / "ray"
    overrides = _ray_overrides(loopback_driver, local_base, storage, max_failures=1)
    recipe = load_recipe(tiny_recipe, overrides)
    marker = tmp_path / "killed.pid"
    result = ray_launcher.launch(recipe, callbacks=[KillRankOneOnce(marker)])
    assert marker.exists(), "the worker was never killed"
    assert result.global_step == MAX_STEPS and result.processes == 2
    # the restarted group began at the step-2 checkpoint; no step logged twice or lost
    assert result.resumed_from is not None
    assert _steps(result.losses) == list(range(1, MAX_STEPS + 1))
    assert (recipe.train_dir / "model" / "adapter_config.json").exists()
