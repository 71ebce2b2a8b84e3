"""Reward-model training on preference pairs, through TRL's RewardTrainer.

The model is the recipe's base (or a scratch decoder) with a one-logit sequence-classification
head; each pair's prompt is prepended to both answers, and the Bradley-Terry loss teaches the
model to score `chosen` above `rejected`. PPO and the loop's gate can then call `score`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kollm.config import Recipe
from kollm.train.common import TrainResult, callbacks, common_args, load_kwargs, train_and_save


def _texts(pairs: list[dict[str, Any]]) -> list[dict[str, str]]:
    rows = []
    for p in pairs:
        prompt = p.get("prompt", "")
        rows.append(
            {
                "chosen": f"{prompt}\n{p['chosen']}".strip(),
                "rejected": f"{prompt}\n{p['rejected']}".strip(),
            }
        )
    return rows


def _model_and_tokenizer(recipe: Recipe, pairs: list[dict[str, Any]]):
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        LlamaForSequenceClassification,
    )

    cfg = recipe.model
    if cfg.base == "scratch":
        from kollm.train.scratch import llama_config, train_tokenizer

        texts = (r["chosen"] + r["rejected"] for r in _texts(pairs))
        tokenizer = train_tokenizer(texts, cfg.vocab_size, recipe.train_dir / "tokenizer")
        config = llama_config(cfg, tokenizer, num_labels=1, pad_token_id=tokenizer.pad_token_id)
        return tokenizer, LlamaForSequenceClassification(config)
    tokenizer = AutoTokenizer.from_pretrained(cfg.base, **load_kwargs(cfg))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(
        cfg.base, num_labels=1, **load_kwargs(cfg)
    )
    model.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, model


def train_reward_model(
    recipe: Recipe, pairs: list[dict[str, Any]], resume: bool = False
) -> TrainResult:
    """A reward model (TRL RewardTrainer) on preference pairs."""
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    if not pairs:
        raise ValueError("no preference pairs to train a reward model on")
    recipe.train_dir.mkdir(parents=True, exist_ok=True)
    tokenizer, model = _model_and_tokenizer(recipe, pairs)
    settings = common_args(recipe, recipe.train_dir, False)
    settings["train_sampling_strategy"] = "random"  # pairs have no single input_ids to group by
    args = RewardConfig(**settings, max_length=recipe.train.max_length)
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(_texts(pairs)),
        processing_class=tokenizer,
        callbacks=callbacks(recipe.train_dir),
    )
    return train_and_save(trainer, tokenizer, recipe, "rm", resume)


def load_scorer(model_dir: Path):
    """A function that scores texts with the reward model in `model_dir`, loaded once here:
    GRPO scores every batch of sampled answers with it."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir)).eval()

    def scores(texts: list[str]) -> list[float]:
        batch = tokenizer(texts, return_tensors="pt", padding=True, truncation=True)
        with torch.inference_mode():
            return model(**batch).logits[:, 0].tolist()  # (batch, 1) -> (batch,)

    return scores


def score(model_dir: Path, texts: list[str]) -> list[float]:
    """Reward of each text (prompt and answer joined as in training)."""
    return load_scorer(model_dir)(texts)
