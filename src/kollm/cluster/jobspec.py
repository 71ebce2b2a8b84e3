"""What a job is, whichever executor runs it: a recipe stage, its overrides and its resources.

`stage_command` turns a spec into the command line both executors run: `python -m kollm STAGE
RECIPE ...`, or, for a train stage whose recipe sets `train.distributed.launcher`, the same
module under `accelerate launch` or `torchrun` with one process per GPU.
`planned_card_gib` asks the planner how much memory each card of a GPU job needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kollm.cluster.planner import TRAIN_OVERHEAD_GIB, ModelShape, Plan, plan
from kollm.config import DistributedConfig, Recipe, load_recipe

STAGES = ("train", "eval", "tune", "loop", "run", "data", "batch")


class JobError(ValueError):
    """An unknown job, or a job that cannot be submitted."""


@dataclass
class JobSpec:
    stage: str
    recipe: str
    overrides: list[str] = field(default_factory=list)
    cpus: float = 1
    gpus: int = 0
    memory_gib: float = 0.0
    args: list[str] = field(default_factory=list)  # `kollm batch`'s arguments (no recipe)

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise JobError(f"stage: expected one of {', '.join(STAGES)}, got {self.stage!r}")
        if self.recipe:  # the job may run from another directory
            self.recipe = str(Path(self.recipe).resolve())

    def resources(self) -> dict[str, Any]:
        return {"cpus": self.cpus, "gpus": self.gpus, "memory_gib": self.memory_gib}

    def load(self) -> Recipe:
        return load_recipe(self.recipe, self.overrides)


def _launcher(recipe: Recipe, python: str) -> list[str]:
    """The launcher prefix of a train stage: nothing, accelerate or torchrun."""
    dist = recipe.train.distributed if recipe.train is not None else None
    if dist is None or dist.launcher in ("none", "ray"):  # ray: kollm starts the workers itself
        return [python]
    if dist.launcher == "torchrun":
        return [python, "-m", "torch.distributed.run", f"--nproc_per_node={dist.num_processes}"]
    command = [python, "-m", "accelerate.commands.launch"]
    if dist.accelerate_config:
        return [*command, "--config_file", dist.accelerate_config]
    command += ["--num_processes", str(dist.num_processes)]
    if dist.strategy == "fsdp":
        command.append("--use_fsdp")
    elif dist.strategy == "deepspeed":
        command.append("--use_deepspeed")
        if dist.deepspeed_config:
            command += ["--deepspeed_config_file", dist.deepspeed_config]
    elif dist.num_processes > 1:
        command.append("--multi_gpu")
    return command


def stage_command(spec: JobSpec, python: str = "python") -> list[str]:
    """The command line that runs the spec's stage with `python` (the cluster's interpreter)."""
    if spec.stage == "batch":
        return [python, "-m", "kollm", "batch", *spec.args]
    if spec.stage == "data":
        return [python, "-m", "kollm", "data", "prepare", spec.recipe, *spec.overrides]
    prefix = [python]
    if spec.stage in ("train", "run"):
        prefix = _launcher(spec.load(), python)
    return [*prefix, "-m", "kollm", spec.stage, spec.recipe, *spec.overrides]


def _shape(recipe: Recipe) -> ModelShape | None:
    """The model's shape from the recipe (scratch) or its local config.json; None for a hub id,
    which the planner would have to download."""
    m = recipe.model
    if m.base == "scratch":
        return ModelShape(
            vocab=m.vocab_size,
            hidden=m.hidden_size,
            layers=m.layers,
            heads=m.heads,
            kv_heads=m.heads,
            head_dim=m.hidden_size // m.heads,
            intermediate=m.intermediate_size,
        )
    config = Path(m.base) / "config.json"
    return ModelShape.load(config) if config.exists() else None


def ray_workers(spec: JobSpec) -> DistributedConfig | None:
    """The Ray Train settings of a train or run job whose recipe sets `launcher: ray`; the job
    itself is then the driver (no GPU), and Ray places the workers."""
    if spec.stage not in ("train", "run") or not spec.recipe:
        return None
    train = spec.load().train
    if train is None or train.distributed.launcher != "ray":
        return None
    return train.distributed


def planned_card_gib(spec: JobSpec) -> float:
    """Memory each of the job's cards needs by the planner (the model split over `gpus` cards);
    0 when the job uses no GPU or its model's config is not on this machine."""
    if spec.gpus == 0 or not spec.recipe:
        return 0.0
    result = _plan(spec.load(), spec.stage)
    return 0.0 if result is None else _ceil(result.total_gib / spec.gpus)


def worker_card_gib(recipe: Recipe) -> float:
    """Memory each card of a Ray Train worker needs: with DDP every worker holds the whole
    model (split over its `gpus_per_worker` cards); FSDP and DeepSpeed ZeRO-3 shard weights,
    gradients and optimizer states over all the cards, each card keeping its own activations
    (ZeRO-1/2 shard less: this is the lower bound). 0 when the model's config is unknown."""
    result = _plan(recipe, "train")
    dist = recipe.train.distributed
    if result is None or not dist.use_gpu:
        return 0.0
    if dist.strategy == "ddp":
        return _ceil(result.total_gib / dist.gpus_per_worker)
    cards = dist.num_workers * dist.gpus_per_worker
    states = result.weights_gib + result.training_gib
    return _ceil(states / cards + result.activation_gib + TRAIN_OVERHEAD_GIB)


def _ceil(gib: float) -> float:
    return math.ceil(gib * 100) / 100


def _plan(recipe: Recipe, stage: str) -> Plan | None:
    """The planner's memory for the recipe's stage on one card; None for a hub id."""
    shape = _shape(recipe)
    if shape is None:
        return None
    train = recipe.train
    if stage == "eval" or train is None:
        task, precision, context, batch, rank = "inference", "bf16", 2048, 1, 8
    else:
        lora = train.lora
        task = "qlora" if lora.quantize_4bit else "lora" if lora.enabled else "full"
        precision = "nf4" if task == "qlora" else "bf16"
        context, batch, rank = train.max_length, train.batch_size, lora.r
    # unset: count it on, as on the GPUs jobs are placed on when activations are large
    checkpointing = train.gradient_checkpointing is not False if train else True
    attention = train.attention if train else "sdpa"
    return plan(
        shape,
        task,
        precision,
        context,
        1,
        rank,
        checkpointing=checkpointing,
        attention=attention,
        batch=batch,
    )


def ray_placement(recipe: Recipe, inventory) -> list[dict]:
    """Where Ray puts a `launcher: ray` run's workers on the inventory's nodes (see
    `worker_placement`); InventoryError when they do not fit."""
    from kollm.cluster.inventory import worker_placement

    dist = recipe.train.distributed
    gpus = dist.gpus_per_worker if dist.use_gpu else 0
    cpus = dist.resources_per_worker.get("CPU", 1.0)
    return worker_placement(inventory, dist.num_workers, gpus, worker_card_gib(recipe), cpus)


def placement_text(recipe: Recipe, rows: list[dict]) -> str:
    """One line for a Ray Train run: its workers, what each holds, and where they go."""
    dist = recipe.train.distributed
    each = (
        f"{dist.gpus_per_worker} GPU(s) of {worker_card_gib(recipe):g} GiB"
        if dist.use_gpu
        else f"{dist.resources_per_worker.get('CPU', 1.0):g} CPU(s)"
    )
    where = ", ".join(
        f"{r['node']} {r['workers']}" + (f" ({r['gpus']} x {r['card']})" if r["card"] else "")
        for r in rows
    )
    where = f"on {where}" if rows else "placed by Ray (give --inventory to see where)"
    return f"ray train: {dist.num_workers} workers ({dist.strategy}), each {each}; {where}"
