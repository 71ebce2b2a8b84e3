"""Seq2seq fine-tuning (BART/T5 family, e.g. KoBART) through transformers' Seq2SeqTrainer.

The prompt is the encoder input and the answer the decoder target, so the loss is on the
answer alone by construction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kollm.config import Recipe
from kollm.train.common import (
    callbacks,
    common_args,
    load_kwargs,
    torch_dtype,
    train_and_save,
)
from kollm.train.generation_eval import generation_eval
from kollm.train.scratch import scratch_model
from kollm.train.sft import lora_config, scratch_texts, to_examples


def load_seq2seq(recipe: Recipe, records: list[dict[str, Any]], train_dir: Path):
    """(tokenizer, model) of a seq2seq recipe: scratch BART or a hub/local base."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    cfg = recipe.model
    if cfg.base == "scratch":
        if cfg.architecture != "bart":
            raise ValueError("train.method seq2seq from scratch needs model.architecture: bart")
        return scratch_model(cfg, scratch_texts(recipe, records), train_dir, recipe.train.seed)
    tokenizer = AutoTokenizer.from_pretrained(cfg.base, **load_kwargs(cfg))
    model = AutoModelForSeq2SeqLM.from_pretrained(
        cfg.base, dtype=torch_dtype(cfg), **load_kwargs(cfg)
    )
    return tokenizer, model


def _tokenize(
    tokenizer, examples: list[dict[str, str]], max_len: int, max_target: int, eos_id: int
):
    from datasets import Dataset

    rows = []
    for e in examples:
        source = tokenizer(e["prompt"], truncation=True, max_length=max_len)
        target = tokenizer(
            text_target=e["completion"].strip(), truncation=True, max_length=max_target
        )
        labels = target["input_ids"]
        if not labels or labels[-1] != eos_id:
            labels = [*labels[: max_target - 1], eos_id]  # the decoder learns where to stop
        rows.append(
            {
                "input_ids": source["input_ids"],
                "attention_mask": source["attention_mask"],
                "labels": labels,
            }
        )
    return Dataset.from_list(rows)


def train_seq2seq(recipe: Recipe, splits: dict[str, list[dict[str, Any]]], resume: bool = False):
    """Seq2seq fine-tuning (BART/T5) with the loss on the answer."""
    from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments

    t = recipe.train
    train_dir = recipe.train_dir
    train_dir.mkdir(parents=True, exist_ok=True)
    tokenizer, model = load_seq2seq(recipe, splits["train"], train_dir)
    train_examples = to_examples(recipe, splits["train"], tokenizer)
    eval_examples = to_examples(recipe, splits.get("dev", []), tokenizer)
    if t.lora.enabled:
        from peft import get_peft_model

        model = get_peft_model(model, lora_config(recipe, "SEQ_2_SEQ_LM"))
    args = Seq2SeqTrainingArguments(**common_args(recipe, train_dir, bool(eval_examples)))
    eos = tokenizer.eos_token_id
    trainer = Seq2SeqTrainer(
        model=model,
        args=args,
        train_dataset=_tokenize(tokenizer, train_examples, t.max_length, t.max_target_length, eos),
        eval_dataset=_tokenize(tokenizer, eval_examples, t.max_length, t.max_target_length, eos)
        if eval_examples
        else None,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model),
        processing_class=tokenizer,
        callbacks=callbacks(train_dir, generation_eval(recipe, splits.get("dev", []), tokenizer)),
    )
    return train_and_save(trainer, tokenizer, recipe, "seq2seq", resume)
