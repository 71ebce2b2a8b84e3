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


@pytest.fixture
def judge(monkeypatch, tmp_path):
    """The scripted judge of the judge tests, served on loopback: it grades an answer without
    정답 or 틀림 in it 5 (`Score: 5/10`), so a tiny model's answers get 5 every time."""
    from tests.conftest import fake_api
    from tests.eval import fake_judge

    yield from fake_api(fake_judge.app, monkeypatch, tmp_path)


def test_the_judge_grades_the_answers_and_early_stopping_stops_on_its_grades(tiny_recipe, judge):
    url, state = judge
    overrides = [
        "train.max_steps=30",
        "train.early_stopping.patience=2",
        *EVAL_EVERY_5,
        "train.eval_generation.metric=judge",
        f"train.eval_generation.judge.url={url}",
        "train.eval_generation.judge.model=fair",
    ]
    result = run_training(load_recipe(tiny_recipe, overrides))
    scores = [e for e in result.losses if "eval_judge" in e]
    # the same grade three times: the first is the best, two without a gain stop the run
    assert [(e["step"], e["eval_judge"]) for e in scores] == [(5, 5.0), (10, 5.0), (15, 5.0)]
    assert result.global_step == 15 and state.calls == 9  # 3 answers graded at 3 evaluations
    best = json.loads((result.train_dir / "eval_generation.json").read_text())
    assert best["metric"] == "judge" and best["best_step"] == 5 and best["missing"] == 0


def test_a_failing_judge_leaves_the_score_missing_and_training_goes_on(tiny_recipe, caplog):
    import socket

    with socket.socket() as s:  # a port nothing listens on: every call is refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    overrides = [
        "train.max_steps=15",
        "train.early_stopping.patience=1",
        *EVAL_EVERY_5,
        "train.eval_generation.metric=judge",
        f"train.eval_generation.judge.url=http://127.0.0.1:{port}/v1",
        "train.eval_generation.judge.model=fair",
        "train.eval_generation.judge.retries=1",
    ]
    result = run_training(load_recipe(tiny_recipe, overrides))
    missing = [e for e in result.losses if "eval_judge" in e]
    assert [e["step"] for e in missing] == [5, 10, 15]
    assert all(e["eval_judge"] is None for e in missing)
    assert all("judge" in e["error"] for e in missing)
    # patience 1 would have stopped at 10 had a missing grade counted as one without a gain
    assert result.global_step == 15
    assert (result.train_dir / "loss.png").exists()
    assert any("eval_judge missing" in r.getMessage() for r in caplog.records)


def test_the_judge_metric_needs_an_endpoint(tiny_recipe):
    with pytest.raises(RecipeError, match=r"train\.eval_generation\.judge"):
        load_recipe(tiny_recipe, [*EVAL_EVERY_5, "train.eval_generation.metric=judge"])


def test_seq2seq_answers_are_scored_while_it_trains(tiny_recipe):
    overrides = [
        "train.method=seq2seq",
        "model.architecture=bart",
        "train.max_steps=10",
        "train.eval_generation.metric=rouge1",
        *EVAL_EVERY_5,
    ]
    result = run_training(load_recipe(tiny_recipe, overrides))
    scores = [e for e in result.losses if "eval_rouge1" in e]
    assert [e["step"] for e in scores] == [5, 10]
    assert all(0 <= e["eval_rouge1"] <= 1 for e in scores)


@pytest.mark.parametrize("method", ["dpo", "kto", "rm", "pretrain", "grpo"])
def test_methods_that_do_not_generate_answers_refuse_eval_generation(tiny_recipe, method):
    with pytest.raises(RecipeError, match=rf"sft or seq2seq, not {method}"):
        load_recipe(tiny_recipe, [f"train.method={method}", *EVAL_EVERY_5])
