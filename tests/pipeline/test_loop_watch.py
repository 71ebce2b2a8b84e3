"""After the loop promotes a version, users' ratings decide whether it stays: worse than the
version it replaced by more than `loop.watch.max_regression`, the alias is rolled back
(issue 29, section 2). No test here trains: no rating carries a correction, so the trigger
(20 new corrections by default) never fires."""

from __future__ import annotations

import itertools
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


def _rate(home, version: str, good: int, bad: int) -> None:
    """Answers of `version`, `good` of them rated good and `bad` rated bad, no corrections."""
    log, store = RequestLog(home), FeedbackStore(home)
    for rating in ["good"] * good + ["bad"] * bad:
        i = next(_ids)
        request = {"model": "tiny", "messages": [{"role": "user", "content": f"질문 {i}"}]}
        log.write(f"w{i}", "chat", "tiny", version, request, "답변입니다.", 5, 3, "stop", 5.0)
        store.add(f"w{i}", rating)


def _loop_promoted_v2(home, local_base, recipe, v1_good=19, v1_bad=1) -> Registry:
    """tiny:1 in production, rated mostly good; then the loop promoted tiny:2 over it."""
    registry = Registry(home)
    for _ in range(2):
        registry.register("tiny", local_base, base_model="scratch", method="sft")
    registry.promote("tiny", 1, "production")
    _rate(home, "tiny:1", v1_good, v1_bad)
    time.sleep(1.1)  # the alias log keeps whole seconds: promote in a later one
    v1 = registry.get("tiny:1")
    registry.promote("tiny", 2, "production")
    promoted = loop.LoopDecision("promoted", "23 new corrections >= 20", v1.ref, "tiny:2")
    loop.record(registry, recipe, promoted, v1, 2, "sha")
    return registry


@pytest.mark.usefixtures("store_backend")  # the rollback path on both stores
def test_a_version_rated_worse_is_rolled_back_with_both_rates(
    tiny_recipe, tmp_path, local_base, monkeypatch
):
    home = tmp_path / "home"
    monkeypatch.setenv("KOLLM_HOME", str(home))
    recipe = load_recipe(tiny_recipe)
    assert recipe.loop.watch.min_ratings == 20 and recipe.loop.watch.max_regression == 0.1
    registry = _loop_promoted_v2(home, local_base, recipe)
    _rate(home, "tiny:2", 12, 8)  # bad rate 0.40 against tiny:1's 0.05
    result = CliRunner().invoke(app, ["loop", str(tiny_recipe)])
    assert result.exit_code == 0, result.output
    assert "loop: rolled back" in result.output
    assert "rolled production back to tiny:1" in result.output
    assert registry.get("tiny@production").version == 1
    (decided,) = [h for h in loop.history(registry, "tiny") if h["decision"] == "rolled back"]
    watch = decided["metrics"]["watch"]
    assert watch["bad_rate"] == 0.4 and watch["ratings"] == 20
    assert watch["previous_bad_rate"] == 0.05 and watch["previous_ratings"] == 20
    assert decided["production_version"] == 2 and decided["candidate_version"] == 1
    assert "0.40 over 20 ratings" in decided["trigger"] and "tiny:1 0.05" in decided["trigger"]
    shown = CliRunner().invoke(app, ["loop", "history", "tiny"], env={"COLUMNS": "300"})
    assert "rolled back" in shown.output and "0.40" in shown.output
    # rolled back once: tiny:1 was not promoted by the loop, so nothing more is watched
    assert loop.run_loop(recipe, registry).decision == "not triggered"
    assert registry.get("tiny@production").version == 1
    assert [h["decision"] for h in loop.history(registry, "tiny")] == ["promoted", "rolled back"]


def test_a_version_rated_as_well_is_kept_and_judged_once(tiny_recipe, tmp_path, local_base):
    recipe = load_recipe(tiny_recipe)
    registry = _loop_promoted_v2(tmp_path / "home", local_base, recipe)
    _rate(registry.home, "tiny:2", 17, 3)  # 0.15: worse by 0.10, not beyond max_regression
    assert loop.run_loop(recipe, registry).decision == "not triggered"  # the trigger, after
    assert registry.get("tiny@production").version == 2
    _rate(registry.home, "tiny:2", 0, 20)  # later complaints are the trigger's, not the watch's
    loop.run_loop(recipe, registry)
    assert registry.get("tiny@production").version == 2
    decisions = loop.history(registry, "tiny")
    assert [h["decision"] for h in decisions] == ["promoted", "kept"]
    assert decisions[1]["metrics"]["watch"]["bad_rate"] == 0.15


def test_no_verdict_before_enough_ratings_or_hours(tiny_recipe, tmp_path, local_base):
    recipe = load_recipe(tiny_recipe, ["loop.watch.min_ratings=5"])
    registry = _loop_promoted_v2(tmp_path / "home", local_base, recipe)
    _rate(registry.home, "tiny:2", 0, 4)  # all bad, but four ratings are not a verdict
    assert loop.run_loop(recipe, registry).decision == "not triggered"
    assert registry.get("tiny@production").version == 2
    _rate(registry.home, "tiny:2", 0, 1)
    waiting = load_recipe(tiny_recipe, ["loop.watch.min_ratings=5", "loop.watch.min_hours=1"])
    loop.run_loop(waiting, registry)  # five ratings, but not an hour yet
    assert registry.get("tiny@production").version == 2
    assert loop.run_loop(recipe, registry).decision == "rolled back"
    assert registry.get("tiny@production").version == 1


def test_off_or_a_promotion_by_hand_is_not_watched(tiny_recipe, tmp_path, local_base):
    recipe = load_recipe(tiny_recipe, ["loop.watch.enabled=false"])
    registry = _loop_promoted_v2(tmp_path / "home", local_base, recipe)
    _rate(registry.home, "tiny:2", 0, 20)
    loop.run_loop(recipe, registry)
    assert registry.get("tiny@production").version == 2
    registry.register("tiny", local_base, base_model="scratch", method="sft")
    registry.promote("tiny", 3, "production")  # by hand: the loop has no say
    _rate(registry.home, "tiny:3", 0, 20)
    loop.run_loop(load_recipe(tiny_recipe), registry)
    assert registry.get("tiny@production").version == 3
    assert [h["decision"] for h in loop.history(registry, "tiny")] == ["promoted"]
