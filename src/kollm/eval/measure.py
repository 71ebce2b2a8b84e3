"""What the gate measures of a candidate and production: the recipe's eval metrics, refusal
and over-refusal on the safety set, and the judge's pairwise verdicts. The loop and
`kollm eval --against` measure through here, then `kollm.eval.gate.decide`."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kollm.config import Recipe
from kollm.eval.gate import Measurements
from kollm.prompts import recipe_format


def evaluate_metrics(recipe: Recipe, model_dir: Path, out_dir: Path) -> dict[str, float]:
    """The model's scores on the recipe's eval split (files written under `out_dir`)."""
    from kollm.eval.evaluate import evaluate_recipe

    return evaluate_recipe(recipe, model_dir, out_dir).metrics["model"]


def refusal_rate(recipe: Recipe, model_dir: Path) -> float | None:
    """Share of the safety set's requests that `model_dir` refuses, or None without a set."""
    from kollm.eval import safety
    from kollm.eval.evaluate import model_format

    path = recipe.loop.gate.safety_file
    if not path:
        return None
    fmt = model_format(model_dir, recipe_format(recipe))
    cases = safety.read_safety_set(path)
    markers, trust = recipe.loop.gate.refusal_markers, recipe.model.trust_remote_code
    report = safety.evaluate_safety(model_dir, fmt, cases, None, markers, trust)
    return report.refusal_rate or 0.0


def judge_client(recipe: Recipe, home: Path):
    """The gate's judge (calls cached in the store under `home`), or None."""
    from kollm.eval.judge import JudgeCache, JudgeClient, JudgeEndpoint

    j = recipe.loop.gate.judge
    if j is None:
        return None
    return JudgeClient(JudgeEndpoint(j.url, j.model), JudgeCache(home), j.concurrency)


def safety_reports(recipe: Recipe, dirs: dict[str, Path], judge) -> dict[str, dict] | None:
    """Refusal and over-refusal of each model on the safety set, classified by the judge."""
    from kollm.eval import safety
    from kollm.eval.evaluate import model_format

    path = recipe.loop.gate.safety_file
    if not path:
        return None
    cases = safety.read_safety_set(path)
    return {
        name: safety.evaluate_safety(
            model_dir,
            model_format(model_dir, recipe_format(recipe)),
            cases,
            judge,
            trust_remote_code=recipe.model.trust_remote_code,
        ).as_dict()
        for name, model_dir in dirs.items()
    }


def _judged_pairs(recipe: Recipe, production: Path, candidate: Path) -> list[dict] | None:
    """Each judged prompt with the candidate's answer (A) and production's (B)."""
    from kollm.data.io import read_jsonl
    from kollm.eval.answers import answers
    from kollm.eval.evaluate import model_format

    j = recipe.loop.gate.judge
    if j is None or not j.prompts:
        return None
    rows = read_jsonl(Path(j.prompts))
    questions = [str(r.get("question") or r.get("prompt") or "") for r in rows]
    trust = recipe.model.trust_remote_code
    fmt = {d: model_format(d, recipe_format(recipe)) for d in (candidate, production)}
    a = answers(candidate, fmt[candidate], questions, j.max_new_tokens, trust)
    b = answers(production, fmt[production], questions, j.max_new_tokens, trust)
    return [
        {"id": r.get("id", i), "question": q, "reference": r.get("reference")}
        | {"answer_a": x, "answer_b": y}
        for i, (r, q, x, y) in enumerate(zip(rows, questions, a, b, strict=True))
    ]


def judge_comparison(recipe: Recipe, production: Path, candidate: Path, judge) -> dict | None:
    """The judge's pairwise verdicts of candidate (A) against production (B) on the prompts."""
    from kollm.eval.judge import compare, summarise_pairs

    pairs = _judged_pairs(recipe, production, candidate)
    if pairs is None:
        return None
    summary = summarise_pairs(compare(judge, pairs)).as_dict()
    summary.pop("verdicts")
    return summary


Evaluate = Callable[[Recipe, Path, Path], dict[str, float]]
Refusal = Callable[[Recipe, Path], float | None]


def measure_pair(
    recipe: Recipe,
    dirs: dict[str, Path],
    out: Path,
    judge,
    seconds: dict[str, float],
    evaluate: Evaluate = evaluate_metrics,
    refusal: Refusal = refusal_rate,
) -> tuple[Measurements, Measurements, float | None, dict[str, Any]]:
    """(candidate's, production's measurements, the judge's win rate of the candidate, the
    details to record) for `dirs` {"candidate", "production"}; eval files under
    `out`/eval-candidate and eval-production, time taken into `seconds`. `evaluate` and
    `refusal` are the loop's own names, which its tests replace."""
    started = time.monotonic()
    prod_dir, cand_dir = dirs["production"], dirs["candidate"]
    prod = Measurements(evaluate(recipe, prod_dir, out / "eval-production"))
    cand = Measurements(evaluate(recipe, cand_dir, out / "eval-candidate"))
    seconds["evaluate"] = time.monotonic() - started
    details: dict[str, Any] = {"candidate": cand.metrics, "production": prod.metrics}
    if judge is None:
        prod.refusal_rate, cand.refusal_rate = refusal(recipe, prod_dir), refusal(recipe, cand_dir)
        details["refusal_rate"] = {"production": prod.refusal_rate, "candidate": cand.refusal_rate}
        return cand, prod, None, details
    started = time.monotonic()
    models = {"production": prod_dir, "candidate": cand_dir}
    details["safety"] = safety_reports(recipe, models, judge)
    details["judge"] = judge_comparison(recipe, prod_dir, cand_dir, judge)
    for side, m in (("candidate", cand), ("production", prod)):
        report = (details["safety"] or {}).get(side) or {}
        m.refusal_rate, m.over_refusal_rate = (
            report.get("refusal_rate"),
            report.get("over_refusal_rate"),
        )
    seconds["judge"] = time.monotonic() - started
    return cand, prod, (details["judge"] or {}).get("win_rate_a"), details
