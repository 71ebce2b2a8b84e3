"""The trigger counts what the version in production earned since its promotion or the last
decision, and a loop on a schedule outlives every outcome (issue 29, section 1)."""

from __future__ import annotations

import itertools
import json
import logging
import subprocess
import time

import pytest
from typer.testing import CliRunner

import kollm.pipeline.loop as loop
from kollm.cli import app
from kollm.config import load_recipe
from kollm.feedback.responses import RequestLog
from kollm.feedback.store import FeedbackStore
from kollm.registry import Registry

_ids = itertools.count()

BAD_RATE = ["loop.trigger.min_corrections=null", "loop.trigger.bad_rate=0.5", "loop.train_on=all"]


def _production(home, local_base) -> Registry:
    registry = Registry(home)
    version = registry.register("tiny", local_base, base_model="scratch", method="sft")
    registry.promote("tiny", version.version, "production")
    return registry


def _rate(home, version: str, count: int, correct: bool = True) -> None:
    """`count` answers of `version`, each rated bad (with a correction when `correct`)."""
    log, store = RequestLog(home), FeedbackStore(home)
    for _ in range(count):
        i = next(_ids)
        request = {"model": "tiny", "messages": [{"role": "user", "content": f"질문 {i}"}]}
        log.write(f"t{i}", "chat", "tiny", version, request, "모르겠습니다.", 5, 3, "stop", 5.0)
        store.add(f"t{i}", "bad", ["evasive"], correction=f"정정 {i}" if correct else None)


def _rejecting(monkeypatch) -> None:
    """A candidate trains in no time and the gate (epsilon -1) rejects it."""
    monkeypatch.setattr(loop, "_train_candidate", lambda r, rows, start, *_: (start, "sha"))
    monkeypatch.setattr(loop, "_evaluate", lambda recipe, model_dir, out: {"score": 1.0})
    monkeypatch.setattr(loop, "refusal_rate", lambda recipe, model_dir: None)


@pytest.mark.usefixtures("store_backend")  # the trigger window, on both stores
def test_after_a_decision_old_ratings_no_longer_fire(
    tiny_recipe, tmp_path, local_base, monkeypatch
):
    registry = _production(tmp_path / "home", local_base)
    recipe = load_recipe(
        tiny_recipe, [*BAD_RATE, "loop.trigger.min_ratings=3", "loop.gate.epsilon=-1"]
    )
    _rate(registry.home, "tiny:1", 4)
    _rejecting(monkeypatch)
    first = loop.run_loop(recipe, registry)
    assert first.decision == "rejected" and first.trigger.startswith(
        "bad rate 1.00 over the last 4"
    )
    run = loop.run_loop(recipe, registry)  # the same four ratings: already decided on
    assert run.decision == "not triggered" and "0 ratings" in run.trigger
    _rate(registry.home, "tiny:1", 3)  # new ratings of production fire it again
    assert loop.run_loop(recipe, registry).decision == "rejected"
    assert [h["decision"] for h in loop.history(registry, "tiny")] == ["rejected", "rejected"]


def test_ratings_of_a_version_not_in_production_do_not_count(tiny_recipe, tmp_path, local_base):
    registry = _production(tmp_path / "home", local_base)
    registry.register("tiny", local_base, base_model="scratch", method="sft")  # tiny:2, a canary
    recipe = load_recipe(tiny_recipe, [*BAD_RATE, "loop.trigger.min_ratings=3"])
    _rate(registry.home, "tiny:2", 5)
    run = loop.run_loop(recipe, registry)
    assert run.decision == "not triggered" and "by tiny:1" in run.trigger
    assert "0 ratings" in run.trigger
    # once tiny:2 is promoted, what tiny:1 earned before does not count either
    _rate(registry.home, "tiny:1", 5)
    time.sleep(1.1)  # the alias log keeps whole seconds: promote in a later one
    registry.promote("tiny", 2, "production")
    run = loop.run_loop(recipe, registry)
    assert run.decision == "not triggered" and "by tiny:2" in run.trigger
    assert "0 ratings" in run.trigger


def test_too_few_ratings_do_not_fire_and_the_decision_says_why(tiny_recipe, tmp_path, local_base):
    registry = _production(tmp_path / "home", local_base)
    recipe = load_recipe(tiny_recipe, BAD_RATE)
    assert recipe.loop.trigger.min_ratings == 20  # the default
    _rate(registry.home, "tiny:1", 19, correct=False)
    run = loop.run_loop(recipe, registry)
    assert run.decision == "not triggered"
    assert "19 ratings (bad rate 1.00) < loop.trigger.min_ratings=20" in run.trigger
    _rate(registry.home, "tiny:1", 1, correct=False)
    skipped = loop.run_loop(recipe, registry)  # fires, but no correction to train on
    assert skipped.decision == "skipped" and "no corrections" in skipped.metrics["reason"]


def test_the_schedule_records_skipped_and_failed_runs_and_keeps_going(
    tiny_recipe, tmp_path, local_base, monkeypatch
):
    home = tmp_path / "home"
    monkeypatch.setenv("KOLLM_HOME", str(home))
    registry = _production(home, local_base)

    def oom(recipe, rows, start_from, loop_dir, tasks=None):
        raise RuntimeError("CUDA out of memory")

    # between the checks, users rate: first without corrections, then with them
    script = iter(
        [
            lambda: _rate(home, "tiny:1", 3, correct=False),  # -> skipped: nothing to train
            lambda: _rate(home, "tiny:1", 3),  # -> fires; training raises -> failed
        ]
    )

    def sleep(seconds):
        step = next(script, None)
        if step is None:
            raise KeyboardInterrupt  # Ctrl-C after the third check
        step()

    monkeypatch.setattr(loop, "_train_candidate", oom)
    monkeypatch.setattr(time, "sleep", sleep)
    args = ["loop", str(tiny_recipe), *BAD_RATE, "loop.trigger.min_ratings=3", "--every", "60"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    said = [line.split(" (")[0] for line in result.output.splitlines() if line.startswith("loop:")]
    assert said == ["loop: not triggered", "loop: skipped", "loop: failed", "loop: stopped"]
    recorded = loop.history(registry, "tiny")
    assert [h["decision"] for h in recorded] == ["skipped", "failed"]
    assert recorded[1]["metrics"]["error"] == "RuntimeError: CUDA out of memory"
    assert registry.get("tiny@production").version == 1  # production unchanged
    assert list(tmp_path.glob("run/loop/*/RUNNING.json")) == []  # decided: nothing left
    shown = CliRunner().invoke(app, ["loop", "history", "tiny"], env={"COLUMNS": "300"})
    assert "CUDA out of memory" in shown.output and "skipped" in shown.output


def test_a_run_killed_midway_is_reported_by_the_next(tiny_recipe, tmp_path, local_base, caplog):
    registry = _production(tmp_path / "home", local_base)
    recipe = load_recipe(tiny_recipe, BAD_RATE)
    dead = subprocess.Popen(["true"])
    dead.wait()
    killed = recipe.run_dir / "loop" / "20261207-000000-000000"
    killed.mkdir(parents=True)
    state = {"pid": dead.pid, "host": "elsewhere", "production": "tiny:1", "registered": "tiny:2"}
    (killed / "RUNNING.json").write_text(json.dumps(state))
    with caplog.at_level(logging.WARNING, logger="kollm.loop"):
        assert loop.run_loop(recipe, registry).decision == "not triggered"
    assert "found an interrupted run" in caplog.text and "tiny:2" in caplog.text
    assert not (killed / "RUNNING.json").exists() and (killed / "INTERRUPTED.json").exists()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kollm.loop"):
        loop.run_loop(recipe, registry)
    assert "interrupted" not in caplog.text  # said once


def test_the_candidate_trains_without_the_recipes_evaluation_while_training(tiny_recipe, tmp_path):
    """The recipe's train.eval_generation needs a dev split the feedback export lacks: the
    loop's candidate trains with it off (the gate judges the candidate)."""
    on = ["train.eval_generation.every_steps=2", "train.early_stopping.patience=1"]
    recipe = load_recipe(tiny_recipe, on)
    trains = loop._loop_recipe(recipe, tmp_path / "loop", tmp_path / "prod").train
    assert trains.eval_generation.every_steps is None and trains.early_stopping.patience is None
    assert recipe.train.eval_generation.every_steps == 2  # the recipe itself is untouched
