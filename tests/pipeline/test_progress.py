"""Long work shows progress in a log, not only as a Rich bar on a terminal."""

from typer.testing import CliRunner

from kollm.cli import app


def test_a_piped_run_logs_each_stage_training_steps_and_stage_times(tiny_recipe, monkeypatch):
    import kollm.train.common as common

    monkeypatch.setattr(common.ProgressLog, "interval_s", 0.0)  # a line every step
    result = CliRunner().invoke(app, ["run", str(tiny_recipe), "train.max_steps=6"])
    assert result.exit_code == 0, result.output
    out = result.output
    for stage in ("data", "train", "eval", "register"):
        assert f"{stage}: starting" in out and f"{stage}: done in" in out
    assert "train: 6 steps on cpu" in out
    assert "train: step 3/6 (50%)" in out and "train: step 6/6 (100%)" in out
    assert "Training metrics" not in out  # TRL's Rich boxes are for terminals only
    table = out[out.index("kollm run: tiny") :]
    assert table.count(" s │") >= 4  # each stage's time in the closing table
