"""`kollm plan`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from kollm.cli.common import (
    InventoryOpt,
    app,
    console,
    fail,
    user_errors,
)
from kollm.registry import Registry


def _inventory(path: Path | None):
    from kollm.cluster.inventory import InventoryError, load_inventory

    if path is None:
        return None
    try:
        return load_inventory(path)
    except InventoryError as err:
        fail(str(err))


def _plan_shape(model: str | None, numbers: dict[str, Any]):
    from kollm.cluster.planner import ModelShape, PlanInputError

    try:
        if model is None:
            return ModelShape.from_config(numbers, "the numbers given")
        source = Path(model)
        with user_errors():
            if not source.exists():
                source = Path(Registry().get(model).artifact_path)
        return ModelShape.load(source, numbers)
    except PlanInputError as err:
        fail(str(err))


@app.command("plan")
def plan_cmd(
    model: Annotated[
        str | None,
        typer.Argument(help="A model dir, a config.json, or a registry reference."),
    ] = None,
    task: Annotated[str, typer.Option(help="inference, full, lora or qlora.")] = "inference",
    precision: Annotated[str, typer.Option(help="fp32, bf16, fp16, int8, int4 or nf4.")] = "bf16",
    context: Annotated[int, typer.Option(help="Context length in tokens.")] = 8192,
    concurrency: Annotated[int, typer.Option(help="Sequences held at once.")] = 1,
    lora_rank: Annotated[int, typer.Option(help="LoRA rank (lora, qlora).")] = 16,
    batch: Annotated[int, typer.Option(help="Training: sequences per step.")] = 1,
    checkpointing: Annotated[
        bool, typer.Option(help="Training: gradient checkpointing (TRL's default).")
    ] = True,
    attention: Annotated[
        str, typer.Option(help="Training: sdpa, flash or eager (keeps the score matrices).")
    ] = "sdpa",
    gpu: Annotated[
        str | None, typer.Option(help="Card for the KV budget (see the catalogue).")
    ] = None,
    gpu_memory_utilization: Annotated[float, typer.Option(help="vLLM's share of the card.")] = 0.9,
    activation_gib: Annotated[
        float | None, typer.Option(help="Activation peak, if known (GiB).")
    ] = None,
    inventory: InventoryOpt = None,
    workers: Annotated[
        int | None, typer.Option(help="Training on Ray Train: data-parallel workers (DDP).")
    ] = None,
    gpus_per_worker: Annotated[int, typer.Option(help="Ray Train: GPUs each worker holds.")] = 1,
    params_b: Annotated[float | None, typer.Option(help="Parameters, billions.")] = None,
    layers: Annotated[int | None, typer.Option(help="Decoder layers.")] = None,
    hidden_size: Annotated[int | None, typer.Option(help="Hidden size.")] = None,
    heads: Annotated[int | None, typer.Option(help="Attention heads.")] = None,
    kv_heads: Annotated[int | None, typer.Option(help="KV heads (GQA).")] = None,
    head_dim: Annotated[int | None, typer.Option(help="Head dimension.")] = None,
    vocab_size: Annotated[int | None, typer.Option(help="Vocabulary size.")] = None,
    intermediate_size: Annotated[int | None, typer.Option(help="MLP size.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Memory a model needs for a task, which cards hold it, and its KV budget (vLLM blocks).

    The model is a config (a dir, a config.json, a registry reference), explicit numbers
    (--layers --hidden-size --heads --kv-heads --vocab-size ...), or a config and numbers."""
    from kollm.cluster.inventory import placements
    from kollm.cluster.planner import PlanInputError, PlanRequest, plan_on_cards

    inv = _inventory(inventory)
    numbers = {
        "num_parameters": int(params_b * 1e9) if params_b else None,
        "num_hidden_layers": layers,
        "hidden_size": hidden_size,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "vocab_size": vocab_size,
        "intermediate_size": intermediate_size,
    }
    shape = _plan_shape(model, {k: v for k, v in numbers.items() if v is not None})
    req = PlanRequest(
        task,
        precision,
        context,
        concurrency,
        lora_rank,
        batch,
        checkpointing,
        attention,
        gpu_memory_utilization,
        activation_gib,
        gpu,
    )
    try:
        result, card, longest = plan_on_cards(shape, req, inv.cards() if inv else None)
    except PlanInputError as err:
        fail(str(err))
    rows = placements(result.total_gib, inv, gpu_memory_utilization) if inv is not None else None
    spread = _workers(result, task, workers, gpus_per_worker, inv)
    if as_json:
        out = {**result.as_dict(), "card": card, "inventory": rows, "max_context": longest}
        print(json.dumps({**out, **({"ray_train": spread} if spread else {})}))
        return
    console.print(_plan_table(result, model or f"{shape.parameters / 1e9:.1f}B", req))
    _plan_lines(result, card, longest, rows, context)
    if spread:
        _worker_lines(spread)


def _workers(result, task: str, workers: int | None, gpus_per_worker: int, inv):
    """A Ray Train run of `workers` DDP workers: each holds the whole model over its cards;
    with an inventory, how many workers each node takes."""
    from kollm.cluster.inventory import InventoryError, worker_placement

    if workers is None:
        return None
    if task == "inference" or workers < 1 or gpus_per_worker < 1:
        fail("--workers and --gpus-per-worker (at least 1) plan a training task")
    card_gib = result.total_gib / gpus_per_worker
    out = {"workers": workers, "gpus_per_worker": gpus_per_worker, "card_gib": card_gib}
    if inv is not None:
        try:
            out["nodes"] = worker_placement(inv, workers, gpus_per_worker, card_gib)
        except InventoryError as err:
            out["short"] = str(err)
    return out


def _worker_lines(spread: dict[str, Any]) -> None:
    console.print(
        f"ray train: {spread['workers']} workers x {spread['gpus_per_worker']} GPU(s), "
        f"{spread['card_gib']:.2f} GiB a card (DDP: every worker holds the whole model)"
    )
    for row in spread.get("nodes", []):
        console.print(f"{row['node']}: {row['workers']} workers on {row['gpus']} {row['card']}")
    if "short" in spread:
        console.print(spread["short"])


def _plan_table(result, name: str, req) -> Table:
    table = Table(
        title=f"{name}: {req.task} at {req.precision}, context {req.context}, "
        f"concurrency {req.concurrency}"
    )
    table.add_column("")
    table.add_column("GiB", justify="right")
    rest = result.total_gib - result.weights_gib - result.activation_gib - result.training_gib
    for label, value in (
        ("weights", result.weights_gib),
        ("activations (peak)", result.activation_gib),
        ("gradients + optimizer / adapters", result.training_gib),
        (
            "KV cache for the context x concurrency"
            if req.task == "inference"
            else "CUDA context and workspace",
            rest,
        ),
        ("total", result.total_gib),
        ("rule of thumb: 2 GB per billion (FP16)", result.rule_of_thumb_gib),
    ):
        table.add_row(label, f"{value:.2f}")
    return table


def _plan_lines(result, card: str | None, longest: int | None, rows, context: int) -> None:
    console.print(f"assumes: {result.assumes}")
    console.print(f"fits alone on: {', '.join(result.fits) or 'none'}")
    if longest is not None:
        console.print(f"on {card}: the longest sequence that trains is {longest} tokens")
    for row in rows or []:
        holds = "holds it" if row["holds"] else "too few"
        console.print(
            f"{row['node']}: needs {row['needed']} of its {row['count']} {row['card']} ({holds})"
        )
    if result.kv_cache_gib is not None:
        console.print(
            f"on {card}: KV cache {result.kv_cache_gib:.2f} GiB, {result.kv_blocks} blocks of 16 "
            f"tokens, max concurrency {result.max_concurrency:.1f} at {context} tokens"
        )
