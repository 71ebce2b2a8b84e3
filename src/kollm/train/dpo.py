"""Preference training from an existing model dir: DPO (pairs) and KTO (thumbs), through TRL.

Pairs are (messages or prompt, chosen, rejected) as the feedback export writes them: the
conversation the answer was given in becomes the prompt through `kollm.prompts`, exactly as the
server built it, and both answers are rendered as training rendered answers. KTO takes thumbs
rows (messages or prompt, completion, label), or pairs split into a good and a bad answer. The
reference model is the starting model (TRL copies it, or disables the LoRA adapter).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kollm.config import Recipe
from kollm.prompts import recipe_format, request_example
from kollm.train.common import (
    TrainResult,
    callbacks,
    common_args,
    load_kwargs,
    torch_dtype,
    train_and_save,
)
from kollm.train.sft import lora_config
from kollm.train.templates import fit_examples


def conversation(row: dict[str, Any]) -> list[dict[str, str]]:
    """The turns an exported row's answer followed: its `messages`, or its one `prompt`."""
    return row.get("messages") or [{"role": "user", "content": row["prompt"]}]


def to_dpo_rows(recipe: Recipe, pairs: list[dict[str, Any]], tokenizer) -> list[dict[str, str]]:
    """Preference pairs as DPO rows, rendered in the recipe's prompt format."""
    fmt = recipe_format(recipe)
    rows = []
    for p in pairs:
        prompt, chosen = request_example(fmt, conversation(p), p["chosen"], tokenizer)
        _, rejected = request_example(fmt, conversation(p), p["rejected"], tokenizer)
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows


def train_dpo(
    recipe: Recipe,
    pairs: list[dict[str, Any]],
    start_from: Path,
    beta: float = 0.1,
    resume: bool = False,
) -> TrainResult:
    """Train `start_from` on `pairs`; the result lands in `recipe.train_dir / "model"`."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    if not pairs:
        raise ValueError("no preference pairs to train on")
    t = recipe.train
    recipe.train_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(
        str(start_from), **load_kwargs(recipe.model, start_from)
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(
        str(start_from), dtype=torch_dtype(recipe.model), **load_kwargs(recipe.model, start_from)
    )
    settings = common_args(recipe, recipe.train_dir, False)
    settings["train_sampling_strategy"] = (
        "random"  # length grouping reads input_ids; pairs have two
    )
    args = DPOConfig(**settings, beta=beta, max_length=t.max_length)
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(
            fit_examples(
                tokenizer,
                to_dpo_rows(recipe, pairs, tokenizer),
                ("chosen", "rejected"),
                t.max_length,
            )
        ),
        processing_class=tokenizer,
        peft_config=lora_config(recipe) if t.lora.enabled else None,
        callbacks=callbacks(recipe.train_dir),
    )
    return train_and_save(trainer, tokenizer, recipe, "dpo", resume)


def thumbs(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rated answers for KTO: thumbs rows as they are; a pair as its chosen answer (good)
    and its rejected one (bad)."""
    out = []
    for r in rows:
        if "completion" in r and "label" in r:
            out.append(r)
        elif "chosen" in r and "rejected" in r:
            out += [
                {**r, "completion": r["chosen"], "label": True},
                {**r, "completion": r["rejected"], "label": False},
            ]
        else:
            raise ValueError(
                f"record {r.get('id', '?')}: KTO trains on thumbs records (prompt, completion, "
                "label) or preference records (prompt, chosen, rejected)"
            )
    return out


def to_kto_rows(recipe: Recipe, rows: list[dict[str, Any]], tokenizer) -> list[dict[str, Any]]:
    """Rated answers as KTO rows, rendered in the recipe's prompt format."""
    fmt = recipe_format(recipe)
    data = []
    for r in rows:
        prompt, completion = request_example(fmt, conversation(r), r["completion"], tokenizer)
        data.append({"prompt": prompt, "completion": completion, "label": bool(r["label"])})
    return data


def train_kto(
    recipe: Recipe,
    rows: list[dict[str, Any]],
    start_from: Path,
    beta: float = 0.1,
    resume: bool = False,
) -> TrainResult:
    """KTO on thumbs: (prompt, completion, label) rows as the feedback export writes them,
    or preference pairs."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import KTOConfig, KTOTrainer

    rows = thumbs(rows)
    if len({bool(r["label"]) for r in rows}) < 2:
        raise ValueError("KTO needs both good and bad examples")
    t = recipe.train
    recipe.train_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(
        str(start_from), **load_kwargs(recipe.model, start_from)
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    settings = common_args(recipe, recipe.train_dir, False)
    # KTO's KL estimate pairs each example with its neighbours in a fixed order.
    settings["train_sampling_strategy"] = "sequential"
    trainer = KTOTrainer(
        model=AutoModelForCausalLM.from_pretrained(
            str(start_from),
            dtype=torch_dtype(recipe.model),
            **load_kwargs(recipe.model, start_from),
        ),
        args=KTOConfig(**settings, beta=beta, max_length=t.max_length),
        train_dataset=Dataset.from_list(
            fit_examples(
                tokenizer, to_kto_rows(recipe, rows, tokenizer), ("completion",), t.max_length
            )
        ),
        processing_class=tokenizer,
        peft_config=lora_config(recipe) if t.lora.enabled else None,
        callbacks=callbacks(recipe.train_dir),
    )
    return train_and_save(trainer, tokenizer, recipe, "kto", resume)
