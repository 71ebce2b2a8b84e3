"""`kollm eval RECIPE --against PROD`: the loop's gate, run by hand, with the same record."""

import json

from typer.testing import CliRunner

from kollm.cli import app
from kollm.config import load_recipe
from kollm.registry import Registry


def test_eval_against_writes_the_gate_record_and_exits_by_its_decision(tiny_recipe):
    runner = CliRunner()
    trained = runner.invoke(app, ["train", str(tiny_recipe), "train.max_steps=2"])
    assert trained.exit_code == 0, trained.output
    recipe = load_recipe(tiny_recipe)
    model_dir = recipe.train_dir / "model"
    version = Registry().register("tiny", model_dir, base_model="scratch", method="sft")

    # against itself the scores are equal: within epsilon, so it passes
    same = runner.invoke(
        app, ["eval", str(tiny_recipe), "eval.max_samples=2", "--against", version.ref]
    )
    assert same.exit_code == 0, same.output
    record = json.loads((recipe.eval_dir / "gate.json").read_text())
    assert record["gate"]["passed"] is True
    (score,) = record["gate"]["reasons"]
    assert score["check"] == "metric score" and score["candidate"] == score["production"]
    assert score["says"] in same.output and "gate: passed" in same.output
    assert record["candidate"] == record["production"]  # the eval metrics of each

    # a gate that asks the candidate to beat production by a point fails it, saying why
    stricter = runner.invoke(
        app,
        [
            "eval",
            str(tiny_recipe),
            "eval.max_samples=2",
            "loop.gate.epsilon=-1",
            "loop.gate.metrics=[score,rouge1]",
            "--against",
            str(model_dir),
        ],
    )
    assert stricter.exit_code == 1, stricter.output
    failed = json.loads((recipe.eval_dir / "gate.json").read_text())["gate"]
    assert failed["passed"] is False and len(failed["failures"]) == 2
    for failure in failed["failures"]:
        assert failure in stricter.output
    assert "gate: failed" in stricter.output


def test_eval_against_needs_a_recipe(tmp_path):
    result = CliRunner().invoke(app, ["eval", "--against", str(tmp_path)])
    assert result.exit_code == 2 and "--against" in result.output
