import json

from typer.testing import CliRunner

from kollm.cli import app
from kollm.config import load_recipe, recipe_text
from kollm.pipeline.run import run_recipe
from kollm.registry import Registry


def test_run_registers_once_and_skips_unchanged_stages(tiny_recipe, tmp_path):
    registry = Registry(tmp_path / "home")
    recipe = load_recipe(tiny_recipe, ["registry.alias=production"])
    text = recipe_text(tiny_recipe)
    first = run_recipe(recipe, text, registry=registry)
    assert [(s.name, s.skipped) for s in first.stages] == [
        ("data", False),
        ("train", False),
        ("eval", False),
        ("register", False),
    ]
    version = registry.get("tiny@production")
    assert version.version == 1 and version.method == "sft" and version.base_model == "scratch"
    assert (
        version.data_manifest
        == json.loads((recipe.data_dir / "stats.json").read_text())["manifest_sha256"]
    )
    assert set(version.metrics) >= {
        "rouge1",
        "rouge2",
        "rougeL",
        "score",
        "baseline_score",
        "perplexity",
    }
    assert version.recipe_text == text

    again = run_recipe(recipe, text, registry=registry)
    assert all(s.skipped for s in again.stages)
    assert [v.version for v in registry.list("tiny")] == [1]

    changed = load_recipe(
        tiny_recipe, ["registry.alias=production", "eval.decoding.max_new_tokens=5"]
    )
    third = run_recipe(changed, text, registry=registry)
    assert [s.skipped for s in third.stages] == [True, True, False, True]

    forced = run_recipe(recipe, text, force=True, registry=registry)
    assert not any(s.skipped for s in forced.stages[:3])


def test_eval_outputs_and_cli_paths(tiny_recipe, tmp_path):
    runner = CliRunner()
    assert runner.invoke(app, ["train", str(tiny_recipe), "train.max_steps=10"]).exit_code == 0
    result = runner.invoke(app, ["eval", str(tiny_recipe), "eval.worst_examples=2"])
    assert result.exit_code == 0, result.output
    recipe = load_recipe(tiny_recipe)
    metrics = json.loads((recipe.eval_dir / "metrics.json").read_text())
    assert set(metrics["model"]) == {"rouge1", "rouge2", "rougeL", "score"}
    assert metrics["baseline_lead"]["score"] > 0
    rows = [json.loads(x) for x in (recipe.eval_dir / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == metrics["examples"] == 6
    assert set(rows[0]) == {"id", "prediction", "references", "rouge1", "rouge2", "rougeL"}
    report = (recipe.eval_dir / "report.md").read_text()
    assert "lead baseline" in report and report.count("- prediction:") == 2

    out = tmp_path / "direct"
    direct = runner.invoke(
        app,
        [
            "eval",
            "--model",
            str(recipe.train_dir / "model"),
            "--data",
            str(recipe.data_dir / "dev.jsonl"),
            "-o",
            str(out),
        ],
    )
    assert direct.exit_code == 0, direct.output
    assert json.loads((out / "metrics.json").read_text())["examples"] == 6


def test_eval_rouge_on_files_prints_json(tmp_path):
    pred = tmp_path / "p.jsonl"
    ref = tmp_path / "r.jsonl"
    pred.write_text(
        json.dumps({"id": 1, "prediction": "#Person1#은 책을 빌린다."}, ensure_ascii=False) + "\n"
    )
    ref.write_text(
        json.dumps(
            {"id": 1, "references": ["#Person1#은 책을 빌린다.", "다른 요약"]}, ensure_ascii=False
        )
        + "\n"
    )
    result = CliRunner().invoke(
        app, ["eval", "rouge", "--pred", str(pred), "--ref", str(ref), "--json"]
    )
    assert result.exit_code == 0, result.output
    scores = json.loads(result.output)
    assert scores == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0, "score": 100.0}
    missing = CliRunner().invoke(app, ["eval", "rouge", "--pred", str(ref), "--ref", str(ref)])
    assert missing.exit_code == 2


def test_registry_cli_promote_and_rollback(tmp_path, monkeypatch):
    monkeypatch.setenv("KOLLM_HOME", str(tmp_path / "home"))
    model = tmp_path / "m"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"w")
    registry = Registry()
    registry.register("demo", model)
    registry.register("demo", model)
    runner = CliRunner()
    assert runner.invoke(app, ["registry", "promote", "demo", "1"]).exit_code == 0
    result = runner.invoke(app, ["registry", "promote", "demo", "2", "--alias", "production"])
    assert "demo@production -> demo:2" in result.output
    result = runner.invoke(app, ["registry", "rollback", "demo"])
    assert "demo@production -> demo:1" in result.output
    result = runner.invoke(app, ["registry", "show", "demo@production"])
    assert json.loads(result.output)["version"] == 1
    bad = runner.invoke(app, ["registry", "show", "demo@staging"])
    assert bad.exit_code == 2 and "has no alias 'staging'" in bad.output
