"""The gate's one decision: every check the config asks for gives a reason, passed or not."""

from kollm.config import GateConfig, JudgeGateConfig
from kollm.eval.gate import Measurements, decide

JUDGE = JudgeGateConfig(url="http://judge/v1", model="j", prompts="prompts.jsonl")


def test_a_metric_within_epsilon_passes_at_the_boundary_and_fails_below():
    cfg = GateConfig(metrics=["score", "rouge1"], epsilon=0.5)
    prod = Measurements({"score": 20.0, "rouge1": 0.3})
    at_boundary = decide(cfg, Measurements({"score": 19.5, "rouge1": 0.3}), prod)
    assert at_boundary.passed
    assert [r.says for r in at_boundary.reasons] == [
        "score: 19.500 >= 20.000 - 0.5",
        "rouge1: 0.300 >= 0.300 - 0.5",
    ]
    below = decide(cfg, Measurements({"score": 19.4, "rouge1": 0.3}), prod)
    assert not below.passed and below.failures == ["score: 19.400 < 20.000 - 0.5"]
    (score, _) = below.reasons
    assert (score.check, score.candidate, score.production, score.threshold) == (
        "metric score",
        19.4,
        20.0,
        19.5,
    )


def test_a_gated_metric_missing_from_either_side_fails():
    cfg = GateConfig(metrics=["score", "bleu"])
    decision = decide(cfg, Measurements({"score": 1.0}), Measurements({"score": 1.0, "bleu": 2}))
    assert not decision.passed
    assert decision.failures == ["bleu: not measured for candidate"]


def test_the_judge_win_rate_must_reach_the_least_and_be_measured():
    cfg = GateConfig(metrics=[], judge=JUDGE.model_copy(update={"min_win_rate": 0.6}))
    same = Measurements()
    assert decide(cfg, same, same, judged=0.6).passed
    assert decide(cfg, same, same, judged=0.55).failures == [
        "judge win rate of the candidate: 0.55 < 0.6"
    ]
    missing = decide(cfg, same, same, judged=None)
    assert not missing.passed and missing.failures == [
        "judge win rate of the candidate: not measured"
    ]


def test_a_judge_without_prompts_asks_for_no_win_rate():
    cfg = GateConfig(metrics=[], judge=JUDGE.model_copy(update={"prompts": None}))
    decision = decide(cfg, Measurements(), Measurements())
    assert decision.passed and decision.reasons == []


def test_the_candidate_may_not_refuse_less_than_production():
    cfg = GateConfig(metrics=[], safety_file="safety.jsonl")
    prod = Measurements(refusal_rate=1.0)
    assert decide(cfg, Measurements(refusal_rate=1.0), prod).passed
    less = decide(cfg, Measurements(refusal_rate=0.5), prod)
    assert less.failures == ["refusal rate on the safety set: 0.50 < 1.00"]
    unmeasured = decide(cfg, Measurements(), prod)
    assert unmeasured.failures == ["refusal rate on the safety set: not measured for candidate"]


def test_with_a_judge_the_candidate_may_not_over_refuse_more():
    cfg = GateConfig(metrics=[], safety_file="safety.jsonl", judge=JUDGE)
    prod = Measurements(refusal_rate=1.0, over_refusal_rate=0.25)
    worse = Measurements(refusal_rate=1.0, over_refusal_rate=0.5)
    decision = decide(cfg, worse, prod, judged=0.5)
    assert decision.failures == ["over-refusal on the safety set's benign requests: 0.50 > 0.25"]
    assert decide(cfg, Measurements(refusal_rate=1.0, over_refusal_rate=0.25), prod, 0.5).passed
    # a set with no benign requests measures no over-refusal on either side: said, not failed
    none = Measurements(refusal_rate=1.0)
    said = decide(cfg, none, none, judged=0.5)
    assert said.passed and "not measured on either" in said.reasons[-1].says


def test_every_failure_is_reported_and_the_record_holds_every_reason():
    cfg = GateConfig(metrics=["score"], epsilon=0.0, safety_file="s.jsonl", judge=JUDGE)
    cand = Measurements({"score": 1.0}, refusal_rate=0.0, over_refusal_rate=1.0)
    prod = Measurements({"score": 2.0}, refusal_rate=1.0, over_refusal_rate=0.0)
    record = decide(cfg, cand, prod, judged=0.0).as_dict()
    assert record["passed"] is False
    assert [r["check"] for r in record["reasons"]] == [
        "metric score",
        "judge win rate",
        "refusal rate",
        "over-refusal",
    ]
    assert len(record["failures"]) == 4 and not any(r["passed"] for r in record["reasons"])
