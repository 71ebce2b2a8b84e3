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
    from kollm.cluster.planner import ATTENTION, BYTES, CARDS, kv_budget, max_context, plan

    if task not in ("inference", "full", "lora", "qlora") or precision not in BYTES:
        fail("--task is inference, full, lora or qlora; --precision one of " + ", ".join(BYTES))
    if attention not in ATTENTION:
        fail(f"--attention: one of {', '.join(ATTENTION)}, got {attention!r}")
    if gpu is not None and gpu not in CARDS:
        fail(f"--gpu: unknown card {gpu!r}; known: {', '.join(CARDS)}")
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
    result = plan(
        shape,
        task,
        precision,
        context,
        concurrency,
        lora_rank,
        gpu_memory_utilization,
        activation_gib,
        cards=inv.cards() if inv is not None else None,
        checkpointing=checkpointing,
        attention=attention,
        batch=batch,
    )
    cards = {**CARDS, **(inv.cards() if inv is not None else {})}
    card = gpu or next(iter(result.fits or []), None)
    if card is not None and task == "inference":
        result = kv_budget(result, cards[card], gpu_memory_utilization, context)
    longest = None
    if card is not None and task != "inference":
        options = {"checkpointing": checkpointing, "attention": attention, "batch": batch}
        longest = max_context(shape, task, cards[card], lora_rank, **options)
    rows = placements(result.total_gib, inv, gpu_memory_utilization) if inv is not None else None
    if as_json:
        out = {**result.as_dict(), "card": card, "inventory": rows, "max_context": longest}
        print(json.dumps(out))
        return
    table = Table(
        title=f"{model or f'{shape.parameters / 1e9:.1f}B'}: {task} at {precision}, "
        f"context {context}, concurrency {concurrency}"
    )
    table.add_column("")
    table.add_column("GiB", justify="right")
    for label, value in (
        ("weights", result.weights_gib),
        ("activations (peak)", result.activation_gib),
        ("gradients + optimizer / adapters", result.training_gib),
        (
            "KV cache for the context x concurrency"
            if task == "inference"
            else "CUDA context and workspace",
            result.total_gib - result.weights_gib - result.activation_gib - result.training_gib,
        ),
        ("total", result.total_gib),
        ("rule of thumb: 2 GB per billion (FP16)", result.rule_of_thumb_gib),
    ):
        table.add_row(label, f"{value:.2f}")
    console.print(table)
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
