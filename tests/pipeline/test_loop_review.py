"""What the loop trains on: by default only the corrections a reviewer confirmed in the
console (`loop.train_on: reviewed`), while every rating still counts for the trigger; the demo
trains on all the feedback and says so."""

from __future__ import annotations

import logging

import pytest

import kollm.pipeline.loop as loop
from kollm.config import load_recipe
from kollm.feedback.responses import RequestLog
from kollm.feedback.store import FeedbackStore
from kollm.pipeline.loop import run_loop
from kollm.registry import Registry


def _production(tmp_path, local_base) -> Registry:
    registry = Registry(tmp_path / "home")
    version = registry.register("tiny", local_base, base_model="scratch", method="sft")
    registry.promote("tiny", version.version, "production")
    return registry


def _corrected(home, count: int) -> FeedbackStore:
    """`count` answers, each rated bad and corrected through the API by one key."""
    log, store = RequestLog(home), FeedbackStore(home)
    for i in range(count):
        request = {"model": "tiny", "messages": [{"role": "user", "content": f"질문 {i}"}]}
        log.write(f"r{i}", "chat", "tiny", "tiny:1", request, "모르겠습니다.", 5, 3, "stop", 5.0)
        store.add(f"r{i}", "bad", ["evasive"], correction=f"사용자 정정 {i}", key_name="client")
    return store


class Stop(BaseException):  # not an Exception: the loop records those as `failed`
    pass


def _capture(monkeypatch) -> dict:
    seen: dict = {}

    def train(recipe, rows, start_from, loop_dir, tasks=None):
        seen["rows"] = rows
        raise Stop  # what the candidate would train on is all this test needs

    monkeypatch.setattr(loop, "_train_candidate", train)
    return seen


def test_by_default_only_corrections_a_reviewer_confirmed_train(
    tiny_recipe, tmp_path, local_base, monkeypatch
):
    registry = _production(tmp_path, local_base)
    recipe = load_recipe(tiny_recipe, ["loop.trigger.min_corrections=2"])
    assert recipe.loop.train_on == "reviewed"
    store = _corrected(registry.home, 4)
    # four corrections posted, none reviewed: nothing the loop may train on
    assert run_loop(recipe, registry).decision == "not triggered"
    skipped = run_loop(recipe, registry, force=True)
    assert (
        skipped.decision == "skipped" and "4 corrections await review" in skipped.metrics["reason"]
    )

    ids = [r["id"] for r in store.rows("tiny")]
    store.review(ids[0], "reviewer", ["hallucination"], "검토자가 고친 답")
    store.review(ids[1], "reviewer", ["other"], None)  # the reviewer cleared the correction
    store.review(ids[2], "reviewer", ["evasive"], "사용자 정정 2")  # confirmed as posted
    seen = _capture(monkeypatch)
    with pytest.raises(Stop):
        run_loop(recipe, registry)  # two confirmed corrections meet min_corrections=2
    trained = {r["response_id"]: r["correction"] for r in seen["rows"] if r["correction"]}
    assert trained == {"r0": "검토자가 고친 답", "r2": "사용자 정정 2"}


def test_bad_ratings_still_fire_the_trigger_under_review(tiny_recipe, tmp_path, local_base):
    registry = _production(tmp_path, local_base)
    recipe = load_recipe(
        tiny_recipe,
        [
            "loop.trigger.min_corrections=null",
            "loop.trigger.bad_rate=0.5",
            "loop.trigger.min_ratings=3",
        ],
    )
    _corrected(registry.home, 3)
    skipped = run_loop(recipe, registry)  # fired by the bad rate, but no reviewed correction
    assert skipped.decision == "skipped" and skipped.trigger.startswith("bad rate 1.00")
    (recorded,) = loop.history(registry, "tiny")
    assert "that a reviewer confirmed: nothing to train" in recorded["metrics"]["reason"]


def test_train_on_all_takes_every_correction(tiny_recipe, tmp_path, local_base, monkeypatch):
    registry = _production(tmp_path, local_base)
    recipe = load_recipe(tiny_recipe, ["loop.trigger.min_corrections=2", "loop.train_on=all"])
    _corrected(registry.home, 3)
    seen = _capture(monkeypatch)
    with pytest.raises(Stop):
        run_loop(recipe, registry)
    assert [r["correction"] for r in seen["rows"]] == [f"사용자 정정 {i}" for i in range(3)]


def test_the_demo_recipe_and_demo_loop_train_on_all_and_say_so(
    repo, tiny_recipe, tmp_path, local_base, monkeypatch
):
    import kollm.pipeline.demo as demo

    assert load_recipe(repo / "recipes" / "demo.yaml").loop.train_on == "all"
    registry = _production(tmp_path, local_base)
    recipe = load_recipe(tiny_recipe)
    used = {}

    def scripted(recipe, url, count):
        _corrected(registry.home, 2)
        return 2

    def decide(recipe, registry):
        used["train_on"] = recipe.loop.train_on
        return loop.LoopDecision("not triggered", "scripted")

    monkeypatch.setattr(demo, "_serve", lambda *a, **k: (type("S", (), {})(), "http://x"))
    monkeypatch.setattr(demo, "scripted_feedback", scripted)
    monkeypatch.setattr(demo, "run_loop", decide)
    lines: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger("kollm.demo")
    logger.addHandler(handler)
    monkeypatch.setattr(logger, "level", logging.INFO)
    try:
        demo.demo_loop(recipe, registry, count=2)
    finally:
        logger.removeHandler(handler)
    assert used["train_on"] == "all"
    assert any("loop.train_on=all" in line for line in lines)


def test_a_review_saved_while_the_loop_trains_counts_for_the_next_run(
    tiny_recipe, tmp_path, local_base, monkeypatch
):
    """Found in review: the decision was stamped when the run ended, so a review saved while
    it trained (hours on a real model) fell before the next run's `since` and never trained."""
    registry = _production(tmp_path, local_base)
    # the first run is rejected (gate epsilon -1): tiny:1 stays in production, and its
    # late-reviewed correction counts for the trigger of the next run
    recipe = load_recipe(tiny_recipe, ["loop.trigger.min_corrections=1", "loop.gate.epsilon=-1"])
    store = _corrected(registry.home, 2)
    first, late = [r["id"] for r in store.rows("tiny")]
    store.review(first, "reviewer", ["evasive"], "먼저 검토한 답")

    def train(recipe, rows, start_from, loop_dir, tasks=None):
        store.review(late, "reviewer", ["evasive"], "학습 중에 검토한 답")
        return start_from, "sha"

    monkeypatch.setattr(loop, "_train_candidate", train)
    monkeypatch.setattr(loop, "_evaluate", lambda recipe, model_dir, out: {"score": 1.0})
    monkeypatch.setattr(loop, "refusal_rate", lambda recipe, model_dir: None)
    assert run_loop(recipe, registry).decision == "rejected"
    seen = _capture(monkeypatch)
    with pytest.raises(Stop):
        run_loop(recipe, registry)
    assert [r["correction"] for r in seen["rows"]] == ["학습 중에 검토한 답"]
