"""Training: one self-contained module per method (sft, seq2seq, pretrain)."""

from __future__ import annotations

from typing import Any

from kollm.config import Recipe
from kollm.data.io import read_jsonl
from kollm.train.common import TrainResult


def read_splits(recipe: Recipe) -> dict[str, list[dict[str, Any]]]:
    """The data stage's output splits, cut to `train.max_train_samples` if set."""
    splits = {
        name: read_jsonl(recipe.split_path(name))
        for name in ("train", "dev")
        if recipe.split_path(name).exists()
    }
    if "train" not in splits:
        raise FileNotFoundError(f"{recipe.split_path('train')}: run the data stage first")
    limit = recipe.train.max_train_samples if recipe.train else None
    if limit:
        splits["train"] = splits["train"][:limit]
    return splits


def run_training(recipe: Recipe, resume: bool = False) -> TrainResult:
    """Train with the recipe's method; returns where the model went."""
    if recipe.train is None:
        raise ValueError("the recipe has no 'train' section")
    splits = read_splits(recipe)
    if recipe.train.method == "seq2seq":
        from kollm.train.seq2seq import train_seq2seq

        return train_seq2seq(recipe, splits, resume)
    if recipe.train.method == "rm":
        from kollm.train.rm import train_reward_model

        return train_reward_model(recipe, splits["train"])
    if recipe.train.method == "dpo":
        from pathlib import Path

        from kollm.train.dpo import train_dpo

        if recipe.model.base == "scratch":
            raise ValueError("train.method dpo starts from a trained model: set model.base")
        return train_dpo(recipe, splits["train"], Path(recipe.model.base), recipe.train.beta)
    if recipe.train.method == "grpo":
        from pathlib import Path

        from kollm.train.rl import train_rl

        if recipe.train.reward_model is None or recipe.model.base == "scratch":
            raise ValueError(
                "train.method grpo needs model.base (the policy) and train.reward_model"
            )
        return train_rl(recipe, splits["train"], Path(recipe.train.reward_model))
    if recipe.train.method == "pretrain":
        from kollm.train.pretrain import train_pretrain

        return train_pretrain(recipe, splits, resume)
    from kollm.train.sft import train_sft

    return train_sft(recipe, splits, resume)
