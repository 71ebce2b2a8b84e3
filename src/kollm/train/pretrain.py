"""Continued pretraining: next-token loss on plain text (`text` records), through TRL."""

from __future__ import annotations

from typing import Any

from kollm.config import Recipe
from kollm.train.common import (
    callbacks,
    common_args,
    packing_strategy,
    train_and_save,
)
from kollm.train.sft import load_causal, lora_config
from kollm.train.templates import render, templates_for


def train_pretrain(recipe: Recipe, splits: dict[str, list[dict[str, Any]]], resume: bool = False):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    t = recipe.train
    train_dir = recipe.train_dir
    train_dir.mkdir(parents=True, exist_ok=True)
    prompt_t, response_t = templates_for(recipe.data.kind, t.prompt_template, t.response_template)

    def texts(records: list[dict[str, Any]]) -> list[dict[str, str]]:
        return [{"text": render(prompt_t, r) + render(response_t, r)} for r in records]

    train_rows, eval_rows = texts(splits["train"]), texts(splits.get("dev", []))
    as_pairs = [{"prompt": "", "completion": row["text"]} for row in train_rows]
    tokenizer, model = load_causal(recipe, as_pairs, train_dir)
    args = SFTConfig(
        **common_args(recipe, train_dir, bool(eval_rows)),
        max_length=t.max_length,
        packing=t.packing,
        packing_strategy=packing_strategy(t.packing_strategy),
        dataset_text_field="text",
        completion_only_loss=False,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
        processing_class=tokenizer,
        peft_config=lora_config(recipe) if t.lora.enabled else None,
        callbacks=callbacks(train_dir),
    )
    return train_and_save(trainer, tokenizer, recipe, "pretrain", resume)
