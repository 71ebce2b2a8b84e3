"""Training: one self-contained module per method (sft, seq2seq, pretrain, dpo/kto, rm, grpo)."""

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


def run_training(
    recipe: Recipe, resume: bool = False, splits: dict[str, list[dict[str, Any]]] | None = None
) -> TrainResult:
    """Train with the recipe's method (`train.method`, from `model.base`); returns where the
    model went. With `resume`, every method continues from the newest complete checkpoint of
    an earlier run. `splits` ({"train": rows, ...}) replaces the data stage's (the loop trains
    on the feedback it exported). With `train.distributed.launcher: ray` this process starts
    the Ray Train workers, which each come back here."""
    if recipe.train is None:
        raise ValueError("the recipe has no 'train' section")
    if recipe.train.distributed.launcher == "ray":
        from kollm.train import ray_launcher

        if not ray_launcher.in_ray_worker():
            return ray_launcher.launch(recipe, resume, splits)
    splits = read_splits(recipe) if splits is None else splits
    method = recipe.train.method
    if method in ("dpo", "kto", "grpo"):
        return _from_trained_model(recipe, splits["train"], resume)
    if method == "seq2seq":
        from kollm.train.seq2seq import train_seq2seq

        return train_seq2seq(recipe, splits, resume)
    if method == "rm":
        from kollm.train.rm import train_reward_model

        return train_reward_model(recipe, splits["train"], resume)
    if method == "pretrain":
        from kollm.train.pretrain import train_pretrain

        return train_pretrain(recipe, splits, resume)
    from kollm.train.sft import train_sft

    return train_sft(recipe, splits, resume)


def _from_trained_model(recipe: Recipe, rows: list[dict[str, Any]], resume: bool):
    """dpo, kto and grpo: each moves an existing model (`model.base`) towards better answers."""
    from pathlib import Path

    t = recipe.train
    if recipe.model.base == "scratch":
        raise ValueError(f"train.method {t.method} starts from a trained model: set model.base")
    start_from = Path(recipe.model.base)
    if t.method == "grpo":
        from kollm.train.rl import train_rl

        if t.reward_model is None:
            raise ValueError(
                "train.method grpo needs train.reward_model (a model trained with method rm)"
            )
        return train_rl(recipe, rows, Path(t.reward_model), resume)
    from kollm.train.dpo import train_dpo, train_kto

    train = train_dpo if t.method == "dpo" else train_kto
    return train(recipe, rows, start_from, t.beta, resume)
