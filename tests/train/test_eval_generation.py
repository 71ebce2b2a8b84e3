import json

import pytest

from kollm.config import RecipeError, load_recipe
from kollm.train import run_training

EVAL_EVERY_5 = [
    "train.eval_generation.every_steps=5",
    "train.eval_generation.samples=3",
    "train.eval_generation.max_new_tokens=8",
]


def test_scores_are_logged_and_early_stopping_keeps_the_best_weights(tiny_recipe):
    """One run for both (each tiny run costs ~15 s): the scores in loss.jsonl and the plot,
    then the stop and the weights saved."""
    from safetensors.torch import load_file

    overrides = [
        "train.max_steps=20",
        "train.save_steps=5",
        "train.save_total_limit=5",
        "train.early_stopping.patience=1",
        "train.early_stopping.min_delta=1000",  # nothing after the first evaluation is a gain
        *EVAL_EVERY_5,
    ]
    result = run_training(load_recipe(tiny_recipe, overrides))
    scores = [e for e in result.losses if "eval_rougeL" in e]
    assert [e["step"] for e in scores] == [5, 10]
    assert all(0 <= e["eval_rougeL"] <= 1 for e in scores)
    assert (result.train_dir / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert result.global_step == 10  # stopped one evaluation after the best, not at 20
    best = json.loads((result.train_dir / "eval_generation.json").read_text())
    assert best["best_step"] == 5 and best["last_step"] == 10
    final = load_file(result.model_dir / "model.safetensors")
    ckpts = result.train_dir / "checkpoints"
    at_best = load_file(ckpts / "checkpoint-5" / "model.safetensors")
    at_stop = load_file(ckpts / "checkpoint-10" / "model.safetensors")
    assert all((final[k] == at_best[k]).all() for k in at_best)
    assert any((final[k] != at_stop[k]).any() for k in at_stop)


def test_early_stopping_without_generation_scores_is_refused(tiny_recipe):
    with pytest.raises(RecipeError, match="eval_generation"):
        load_recipe(tiny_recipe, ["train.early_stopping.patience=2"])
