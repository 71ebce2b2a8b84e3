"""Online RL against a reward model: TRL's GRPOTrainer (TRL 1.x has no PPOTrainer any more).

The policy starts from `model.base`, samples `num_generations` answers per prompt, the reward
model (trained with `train.method: rm`) scores each, and GRPO pushes the policy towards the
better ones, with a KL penalty (`beta`) to the starting model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kollm.config import Recipe
from kollm.prompts import recipe_format, record_prompt
from kollm.train.common import TrainResult, callbacks, common_args, load_kwargs, train_and_save


def reward_from(model_dir: Path):
    """A TRL reward function that scores prompt + completion with a trained reward model,
    loaded once for the whole run."""
    from kollm.train.rm import load_scorer

    scores = load_scorer(model_dir)

    def reward(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
        return scores([f"{p}\n{c}".strip() for p, c in zip(prompts, completions, strict=True)])

    reward.__name__ = "reward_model"
    return reward


def train_rl(
    recipe: Recipe, records: list[dict[str, Any]], reward_model: Path, resume: bool = False
) -> TrainResult:
    """GRPO on the prompts of `records` (rendered with the recipe's prompt template)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    if not records:
        raise ValueError("no prompts to train on")
    num_generations, max_completion_length = (
        recipe.train.num_generations,
        recipe.train.max_completion_length,
    )
    recipe.train_dir.mkdir(parents=True, exist_ok=True)
    fmt = recipe_format(recipe)
    tokenizer = AutoTokenizer.from_pretrained(recipe.model.base, **load_kwargs(recipe.model))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    settings = common_args(recipe, recipe.train_dir, False)
    settings["train_sampling_strategy"] = "random"
    # Every step's batch must hold whole groups of generations for the same prompt.
    settings["per_device_train_batch_size"] = num_generations
    args = GRPOConfig(
        **settings,
        num_generations=num_generations,
        max_completion_length=max_completion_length,
        beta=recipe.train.beta,
    )
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(recipe.model.base, **load_kwargs(recipe.model)),
        reward_funcs=reward_from(reward_model),
        args=args,
        train_dataset=Dataset.from_list(
            [{"prompt": record_prompt(fmt, r, tokenizer)} for r in records]
        ),
        processing_class=tokenizer,
        callbacks=callbacks(recipe.train_dir),
    )
    return train_and_save(trainer, tokenizer, recipe, "grpo", resume)
