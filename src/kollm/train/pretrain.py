"""Continued pretraining: next-token loss on plain text (`text` records), through TRL."""

from __future__ import annotations

from typing import Any

from kollm.config import Recipe
from kollm.prompts import recipe_format, render
from kollm.train.common import (
    callbacks,
    common_args,
    packing_strategy,
    train_and_save,
)
from kollm.train.sft import load_causal, lora_config


def train_pretrain(recipe: Recipe, splits: dict[str, list[dict[str, Any]]], resume: bool = False):
    """Continued pretraining on plain text."""
    from datasets import Dataset
    from trl import SFTConfig

    from kollm.train.cpu_loss import CpuSFTTrainer

    t = recipe.train
    train_dir = recipe.train_dir
    train_dir.mkdir(parents=True, exist_ok=True)
    fmt = recipe_format(recipe)

    def texts(records: list[dict[str, Any]]) -> list[dict[str, str]]:
        return [
            {"text": render(fmt.prompt_template, r) + render(fmt.response_template, r)}
            for r in records
        ]

    train_rows, eval_rows = texts(splits["train"]), texts(splits.get("dev", []))
    tokenizer, model = load_causal(recipe, train_rows, train_dir)
    args = SFTConfig(
        **common_args(recipe, train_dir, bool(eval_rows)),
        max_length=t.max_length,
        packing=t.packing,
        packing_strategy=packing_strategy(t.packing_strategy),
        dataset_text_field="text",
        completion_only_loss=False,
    )
    trainer = CpuSFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
        processing_class=tokenizer,
        peft_config=lora_config(recipe) if t.lora.enabled else None,
        callbacks=callbacks(train_dir),
    )
    return train_and_save(trainer, tokenizer, recipe, "pretrain", resume)
