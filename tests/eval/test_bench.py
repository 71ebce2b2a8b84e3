"""Benchmarks through lm-eval against our own server: the bundled Korean multiple-choice
task scores the same through `/v1/completions` as lm-eval's in-process `hf` backend on the
same weights, and the result is recorded on the registry version."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from kollm.cli import app
from kollm.registry import Registry

pytest.importorskip("lm_eval")


def test_accuracy_through_the_server_equals_lm_evals_own_backend(
    served_home, tmp_path, monkeypatch
):
    from kollm.eval.bench import bundled_task_dir, run_tasks
    from kollm.pipeline.bench import _bundled_data

    monkeypatch.setenv("KOLLM_HOME", str(served_home))
    out = CliRunner().invoke(
        app, ["eval", "bench", "tiny@production", "--engine", "transformers", "--json"]
    )
    assert out.exit_code == 0, out.output
    served = json.loads(out.stdout.strip().splitlines()[-1])["kollm_ko_mc"]
    tasks = bundled_task_dir(_bundled_data(tmp_path), tmp_path / "tasks")
    model_dir = Registry(served_home).get("tiny@production").artifact_path
    local = run_tasks("hf", {"pretrained": model_dir, "device": "cpu"}, ["kollm_ko_mc"], [tasks])[
        "kollm_ko_mc"
    ]
    assert abs(served["acc,none"] - local["acc,none"]) * 100 <= 0.5
    assert served["acc,none"] == pytest.approx(local["acc,none"])
    (recorded,) = Registry(served_home).evaluations("tiny@production")[-1:]
    assert recorded["kind"] == "lm-eval"
    assert recorded["metrics"]["tasks"]["kollm_ko_mc"]["acc,none"] == served["acc,none"]


def test_an_unknown_task_is_named(served_home, monkeypatch):
    monkeypatch.setenv("KOLLM_HOME", str(served_home))
    out = CliRunner().invoke(app, ["eval", "bench", "tiny@production", "--tasks", "no_such_task"])
    assert out.exit_code == 2 and "no_such_task" in out.output
