import json

from typer.testing import CliRunner

from kollm.cli import app


def test_tune_searches_resumes_and_summarises(tiny_recipe, tmp_path, monkeypatch):
    monkeypatch.setenv("KOLLM_HOME", str(tmp_path / "home"))
    space = '{"train.learning_rate": {type: log_float, low: 0.001, high: 0.01}}'
    overrides = [
        "train.max_steps=4",
        "eval.max_samples=2",
        "eval.decoding.max_new_tokens=4",
        f"tune.space={space}",
    ]
    runner = CliRunner()
    first = runner.invoke(app, ["tune", str(tiny_recipe), *overrides, "tune.trials=2"])
    assert first.exit_code == 0, first.output
    assert "Best of 2 trials" in first.output
    again = runner.invoke(app, ["tune", str(tiny_recipe), *overrides, "tune.trials=2"])
    assert "Best of 2 trials" in again.output  # resumed, and already complete: nothing ran
    more = runner.invoke(app, ["tune", str(tiny_recipe), *overrides, "tune.trials=3"])
    assert "Best of 3 trials" in more.output  # one more, to the new total
    extra = runner.invoke(app, ["tune", str(tiny_recipe), *overrides, "--trials", "1"])
    assert extra.exit_code == 0, extra.output
    assert "Best of 4 trials" in extra.output  # --trials runs that many more now
    summary = json.loads((tmp_path / "run" / "tune" / "summary.json").read_text())
    values = [t["value"] for t in summary["trials"]]
    assert summary["best"]["value"] == max(values)
    assert 0.001 <= summary["best"]["params"]["train.learning_rate"] <= 0.01
    assert (tmp_path / "run" / "tune" / "history.png").read_bytes()[:4] == b"\x89PNG"
