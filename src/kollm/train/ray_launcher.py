"""`train.distributed.launcher: ray`: the same training function on Ray Train's TorchTrainer.

The driver (`kollm train`, `kollm run`) connects to the cluster and starts `num_workers`
workers; each runs `run_training` as a torchrun process would (Ray sets RANK, WORLD_SIZE and
the process group: NCCL on GPUs, gloo on CPUs), so DDP is the default and FSDP or DeepSpeed
come from the recipe's strategy through the Trainer's own arguments.

Checkpoints: each time the Trainer saves one, `RayCheckpointReport` hands it to Ray, which
copies it to `storage_path/<recipe name>` (one copy per node, merged). When a worker dies, Ray
restarts the whole group (`max_failures` times) and every worker resumes from
`ray.train.get_checkpoint()`, so the step count and the loss curve go on where the checkpoint
left them. Only world rank 0 writes the model, loss curve and summary (as under torchrun); the
driver reads them after `fit()` returns, so the run dir must be on a filesystem the driver and
rank 0 both see (one node, or NFS) - as the data stage's splits must be for every worker.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from kollm.config import DistributedConfig, Recipe
from kollm.train.common import TrainResult, read_losses

PASSED_ENV = ("KOLLM_HOME", "HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
PASSED_ENV += ("HF_DATASETS_OFFLINE",)
_worker_state: dict[str, Any] = {"active": False, "callbacks": []}


def in_ray_worker() -> bool:
    """Whether this process is a Ray Train worker started by `launch`."""
    return bool(_worker_state["active"])


def storage_path(recipe: Recipe) -> str:
    """`train.distributed.storage_path`, or `<run dir>/ray` (absolute, as Ray asks)."""
    given = recipe.train.distributed.storage_path
    if given and "://" in given:
        return given
    return str(Path(given or recipe.train_dir / "ray").resolve())


def launch(
    recipe: Recipe,
    resume: bool = False,
    splits: dict[str, list[dict[str, Any]]] | None = None,
    callbacks: list[TrainerCallback] | None = None,
) -> TrainResult:
    """Train on `num_workers` Ray workers; extra Trainer `callbacks` run in every worker.
    Without `resume`, an earlier run's checkpoints in storage are cleared first."""
    import ray
    from ray.train.torch import TorchTrainer

    dist = recipe.train.distributed
    if splits is None and not recipe.split_path("train").exists():
        raise FileNotFoundError(f"{recipe.split_path('train')}: run the data stage first")
    if not resume:
        _clear_run(storage_path(recipe), recipe.name)
    (recipe.train_dir / "train_summary.json").unlink(missing_ok=True)
    config = {"recipe": recipe, "resume": resume, "splits": splits, "callbacks": callbacks or []}
    with _connected(dist):
        trainer = TorchTrainer(
            _worker,
            train_loop_config=config,
            scaling_config=scaling(dist),
            run_config=_run_config(recipe),
        )
        try:
            trainer.fit()
        except ray.train.TrainingFailedError as err:
            raise RuntimeError(
                f"Ray Train run {recipe.name} failed (restarts allowed: {dist.max_failures}; "
                f"checkpoints in {storage_path(recipe)}): {err}"
            ) from err
    return _driver_result(recipe)


def _run_config(recipe: Recipe):
    """The run's name, its checkpoints in storage (`save_total_limit` kept) and restarts;
    the workers get this process's KOLLM_HOME and Hugging Face settings."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig

    env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
    return RunConfig(
        name=recipe.name,
        worker_runtime_env={"env_vars": env},
        storage_path=storage_path(recipe),
        failure_config=FailureConfig(max_failures=recipe.train.distributed.max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=recipe.train.save_total_limit),
    )


def scaling(dist: DistributedConfig):
    """Workers and what each holds: `gpus_per_worker` GPUs with `use_gpu`, else 1 CPU (or
    `resources_per_worker`)."""
    from ray.train import ScalingConfig

    resources = dict(dist.resources_per_worker)
    if dist.use_gpu:
        resources["GPU"] = float(dist.gpus_per_worker)
    return ScalingConfig(
        num_workers=dist.num_workers,
        use_gpu=dist.use_gpu,
        resources_per_worker=resources or None,
    )


@contextmanager
def _connected(dist: DistributedConfig):
    """Ray, connected to `address` (or RAY_ADDRESS, or this machine's cluster); a connection
    made here is closed again."""
    import ray

    if ray.is_initialized():
        yield
        return
    ray.init(address=dist.address or os.environ.get("RAY_ADDRESS"), logging_level="WARNING")
    try:
        yield
    finally:
        ray.shutdown()


def _clear_run(storage: str, name: str) -> None:
    """Remove `storage/name`: Ray resumes a run whose name it finds there."""
    import pyarrow.fs

    fs, root = pyarrow.fs.FileSystem.from_uri(storage)
    path = f"{root.rstrip('/')}/{name}"
    if fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound:
        fs.delete_dir(path)


def _worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: the recipe's training method, as one process of torchrun."""
    from kollm.train import run_training

    _worker_state.update(active=True, callbacks=config["callbacks"])
    try:
        run_training(config["recipe"], config["resume"], config["splits"])
    finally:
        _worker_state.update(active=False, callbacks=[])


def _driver_result(recipe: Recipe) -> TrainResult:
    """The run as rank 0 recorded it (train_summary.json beside the model)."""
    train_dir = recipe.train_dir
    summary_path = train_dir / "train_summary.json"
    if not summary_path.exists():
        raise RuntimeError(
            f"{summary_path}: rank 0 wrote no summary where this machine can read it; with "
            "workers on other nodes, put the run dir (output_dir) on a shared filesystem"
        )
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    result = TrainResult(
        model_dir=train_dir / "model",
        train_dir=train_dir,
        method=summary["method"],
        base_model=summary["base_model"],
        global_step=summary["global_step"],
        resumed_from=summary["resumed_from"],
        is_adapter=summary["is_adapter"],
        losses=read_losses(train_dir / "loss.jsonl"),
    )
    result.processes = summary.get("processes", 1)
    return result


# In the worker: hooks train_and_save calls.


def strategy_args(recipe: Recipe) -> dict[str, Any]:
    """TrainingArguments for the recipe's strategy under Ray (accelerate gets them as flags)."""
    dist = recipe.train.distributed
    if dist.launcher != "ray" or dist.strategy == "ddp":
        return {}
    if dist.strategy == "fsdp":
        return {"fsdp": "full_shard auto_wrap"}
    if not dist.deepspeed_config:
        raise ValueError("train.distributed.strategy deepspeed needs deepspeed_config")
    return {"deepspeed": dist.deepspeed_config}


def prepare(trainer) -> None:
    """Ray's Transformers integration, kollm's checkpoint report, and the launch's callbacks."""
    from ray.train.huggingface.transformers import prepare_trainer

    prepare_trainer(trainer)
    trainer.add_callback(RayCheckpointReport())
    for callback in _worker_state["callbacks"]:
        trainer.add_callback(callback)


@contextmanager
def ray_checkpoint():
    """The checkpoint Ray restarted this worker group from, as a local dir; None at first."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        yield None
        return
    with checkpoint.as_directory() as path:
        yield Path(path)


class RayCheckpointReport(TrainerCallback):
    """Hands each saved checkpoint to Ray Train, which copies it to storage. Ray's own
    RayTrainReportCallback copies the newest checkpoint on every rank into a temp dir first;
    here the ranks wait for each other (FSDP and DeepSpeed write a shard each), then the first
    worker of each node hands over that node's dir as it is, and the other ranks report the
    metrics alone (every worker must call report)."""

    def on_save(self, args, state, control, **kwargs):
        import ray.train
        import torch.distributed as torch_dist

        if torch_dist.is_available() and torch_dist.is_initialized():
            torch_dist.barrier()
        ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        metrics = {"step": state.global_step}
        losses = [e["loss"] for e in state.log_history if "loss" in e]
        if losses:
            metrics["loss"] = losses[-1]
        checkpoint = None
        if ray.train.get_context().get_local_rank() == 0 and ckpt.is_dir():
            checkpoint = ray.train.Checkpoint.from_directory(str(ckpt))
        ray.train.report(metrics, checkpoint=checkpoint, delete_local_checkpoint_after_upload=False)
        return control
