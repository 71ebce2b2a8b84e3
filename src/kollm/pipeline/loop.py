"""`kollm loop`: feedback -> export -> retrain from production -> evaluate both -> gate -> promote.

The trigger counts what the version in production earned: the ratings and corrections of the
answers it gave (the request log names the version) since it was promoted or since the last
decision, whichever is later; a bad rate over fewer than `loop.trigger.min_ratings` ratings does
not fire. When it fires, the
corrections become preference pairs (or SFT rows): with `loop.train_on: reviewed` (the default)
only those a reviewer confirmed in the console since the last decision, with the reviewer's
correction; with `all`, every correction as posted. Then a candidate is trained from the production
version (through `kollm train`'s dispatch), both are measured (eval split, safety set, judge), and
the gate (`kollm.eval.gate.decide`, the one place a candidate passes or fails) promotes the
candidate only if it is not worse than production (minus epsilon) on every gated metric, nor on
safety, and the judge prefers it enough. Every decision, with the numbers and the gate's record
(`metrics["gate"]`: passed and every reason) that led to it, goes to the append-only
`loop_decisions` table: also `skipped` (it fired with nothing to train on) and `failed`
(training or evaluation raised; production stays).
A failed run does not use its feedback up: the next run tries again.

After a promotion the loop watches the new version (`loop.watch`): once it has
`min_ratings` ratings since its promotion (and `min_hours`, if set), its bad rate is compared
with the previous version's over that one's last `loop.trigger.window` ratings before it was
replaced; worse by more than `max_regression`, the alias is rolled back (the registry's
rollback: versions are immutable, nothing retrains) and `rolled back` is recorded with both
rates; otherwise `kept`. Each run judges the watch before the trigger.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kollm.config import Recipe
from kollm.data.io import read_jsonl
from kollm.eval.gate import decide
from kollm.eval.measure import evaluate_metrics, judge_client, measure_pair, refusal_rate
from kollm.feedback.decisions import LoopDecisions
from kollm.feedback.export import export_feedback
from kollm.feedback.store import FeedbackStore
from kollm.prompts import recipe_format
from kollm.registry import ModelVersion, Registry
from kollm.tasks import recorded_tasks, task_layers

log = logging.getLogger("kollm.loop")
RUNNING = "RUNNING.json"  # in a loop run dir until its decision is recorded


class LoopError(ValueError):
    """The loop cannot act: no production version, or nothing to train on."""


@dataclass
class LoopDecision:
    # "promoted", "rejected", "skipped", "failed", "not triggered"; watch: "kept", "rolled back"
    decision: str
    trigger: str
    production: str | None = None
    candidate: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def last_decision_time(registry: Registry, model: str) -> str | None:
    """When the loop last decided for `model`: a failed run does not count (what it read
    trains on the next run), nor does 'not triggered', nor the watch's verdicts (the
    corrections users made meanwhile still train the next candidate)."""
    return LoopDecisions(registry.home).last_read(model)


def promoted_at(registry: Registry, version: ModelVersion, alias: str) -> str | None:
    """When `alias` last moved to `version` (a promotion or a rollback), as the feedback
    store writes times (milliseconds), or None when the log does not say."""
    moves = [
        m
        for m in registry.alias_log(version.name)
        if m["alias"] == alias and m["to_version"] == version.version
    ]
    return _ms(moves[-1]["at"]) if moves else None


def _ms(at: str) -> str:
    # the alias log keeps whole seconds: a rating in the second of the move counts
    return dt.datetime.fromisoformat(at).isoformat(timespec="milliseconds")


def earned(
    rows: list[dict[str, Any]], production: ModelVersion, start: str | None
) -> list[dict[str, Any]]:
    """The rows of `rows` that rate answers `production` gave, from `start` on."""
    return [
        r
        for r in rows
        if r["model_version"] == production.ref and (start is None or r["created_at"] >= start)
    ]


def training_rows(
    recipe: Recipe, rows: list[dict[str, Any]], since: str | None
) -> list[dict[str, Any]]:
    """The feedback the candidate may train on, of `rows` (all of the model's): with
    `train_on: all`, what arrived since the last decision; with `reviewed`, the ratings a
    reviewer confirmed since then (a late review of older feedback counts), carrying the
    reviewer's correction only."""
    if recipe.loop.train_on == "all":
        return [r for r in rows if since is None or r["created_at"] >= since]
    return [
        {**r, "correction": r["reviewed_correction"]}
        for r in rows
        if r.get("reviewed_at") and (since is None or r["reviewed_at"] >= since)
    ]


def check_trigger(
    recipe: Recipe, rows: list[dict[str, Any]], window_rows: list[dict[str, Any]]
) -> tuple[str | None, str]:
    """(why the loop fires or None, what it saw). `rows`: the corrections production earned
    that would train; `window_rows`: production's ratings in the window, for the bad rate."""
    t = recipe.loop.trigger
    corrections = sum(1 for r in rows if r["correction"])
    if t.min_corrections is not None and corrections >= t.min_corrections:
        return f"{corrections} new corrections >= {t.min_corrections}", ""
    recent = window_rows[-t.window :]
    seen = f"{corrections} new corrections, {len(recent)} ratings"
    if t.bad_rate is None or not recent:
        return None, seen
    rate = sum(1 for r in recent if not r["is_good"]) / len(recent)
    if len(recent) < t.min_ratings:
        return None, f"{seen} (bad rate {rate:.2f}) < loop.trigger.min_ratings={t.min_ratings}"
    if rate > t.bad_rate:
        return f"bad rate {rate:.2f} over the last {len(recent)} ratings > {t.bad_rate}", ""
    return None, f"{seen}, bad rate {rate:.2f} <= {t.bad_rate}"


def _watch_open(registry: Registry, recipe: Recipe, production: ModelVersion) -> bool:
    """Whether the loop promoted `production` and has not yet kept or rolled it back."""
    verdicts = LoopDecisions(registry.home).watch_verdicts(
        production.name, recipe.loop.alias, production.version
    )
    return bool(verdicts) and verdicts[-1] == "promoted"


def previous_tenure(
    registry: Registry, production: ModelVersion, alias: str
) -> tuple[ModelVersion, str | None, str] | None:
    """The version `alias` held before `production`'s latest promotion, and when it held it:
    from its own latest move there to that promotion. None after a rollback to `production`."""
    moves = [m for m in registry.alias_log(production.name) if m["alias"] == alias]
    last = [i for i, m in enumerate(moves) if m["to_version"] == production.version]
    if not last or moves[last[-1]]["action"] != "promote" or not moves[last[-1]]["from_version"]:
        return None
    replaced = moves[last[-1]]
    began = [m["at"] for m in moves[: last[-1]] if m["to_version"] == replaced["from_version"]]
    previous = registry.get(f"{production.name}:{replaced['from_version']}")
    return previous, _ms(began[-1]) if began else None, _ms(replaced["at"])


def _bad_rate(rows: list[dict[str, Any]]) -> float | None:
    return sum(1 for r in rows if not r["is_good"]) / len(rows) if rows else None


def _watch_rates(recipe: Recipe, registry: Registry, production: ModelVersion) -> dict | None:
    """Both versions' live bad rates once the watch may judge, else None."""
    w = recipe.loop.watch
    since = promoted_at(registry, production, recipe.loop.alias)
    tenure = previous_tenure(registry, production, recipe.loop.alias)
    if not w.enabled or since is None or tenure is None:
        return None
    every = FeedbackStore(registry.home).rows(production.name)
    new = earned(every, production, since)
    hours = (dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(since)).total_seconds() / 3600
    if len(new) < w.min_ratings or (w.min_hours is not None and hours < w.min_hours):
        log.info("loop: watching %s: %d ratings since its promotion", production.ref, len(new))
        return None
    previous, start, end = tenure
    old = [r for r in earned(every, previous, start) if r["created_at"] < end]
    old = old[-recipe.loop.trigger.window :]
    return {
        "version": production.ref,
        "bad_rate": _bad_rate(new),
        "ratings": len(new),
        "previous": previous.ref,
        "previous_bad_rate": _bad_rate(old),
        "previous_ratings": len(old),
        "max_regression": w.max_regression,
    }


def check_watch(
    recipe: Recipe, registry: Registry, production: ModelVersion
) -> LoopDecision | None:
    """Judge the watch of a version the loop promoted, once it has its ratings: roll the alias
    back to the previous version when users rate it worse by more than `max_regression`,
    else keep it. Recorded either way; None while it is still watching (or nothing to watch)."""
    if not _watch_open(registry, recipe, production):
        return None
    rates = _watch_rates(recipe, registry, production)
    if rates is None:
        return None
    new, old = rates["bad_rate"], rates["previous_bad_rate"]
    said = (
        f"bad rate of {rates['version']} {new:.2f} over {rates['ratings']} ratings since its"
        f" promotion; {rates['previous']} "
        + (f"{old:.2f} over its last {rates['previous_ratings']}" if old is not None else "unrated")
    )
    if old is None or new - old <= rates["max_regression"]:
        kept = f"{said}: within {rates['max_regression']}"
        decision = LoopDecision("kept", kept, production.ref, None, {"watch": rates})
        record(registry, recipe, decision, production, None, None)
        return decision
    restored = registry.rollback(production.name, recipe.loop.alias)
    trigger = f"{said}: worse by {new - old:.2f} > {rates['max_regression']}"
    decision = LoopDecision("rolled back", trigger, production.ref, None, {"watch": rates})
    decision.metrics["restored"] = restored.ref
    record(registry, recipe, decision, production, restored.version, None)
    log.warning("loop: rolled %s back to %s (%s)", recipe.loop.alias, restored.ref, trigger)
    return decision


def record(
    registry: Registry,
    recipe: Recipe,
    d: LoopDecision,
    prod: ModelVersion | None,
    cand_version: int | None,
    export_sha: str | None,
    at: str | None = None,
) -> None:
    """Append a decision to the loop's audit log, `at` when the feedback it used was read
    (the next run reads what arrived or was reviewed after that)."""
    LoopDecisions(registry.home).add(
        {
            "at": at or _now(),
            "model": recipe.model_name,
            "alias": recipe.loop.alias,
            "trigger": d.trigger,
            "production_version": prod.version if prod else None,
            "candidate_version": cand_version,
            "decision": d.decision,
            "metrics": d.metrics,
            "export_sha256": export_sha,
        }
    )


def history(registry: Registry, model: str | None = None) -> list[dict[str, Any]]:
    """Every loop decision, oldest first."""
    return LoopDecisions(registry.home).rows(model)


# The loop measures through these names: its tests replace them to skip real evaluation.
_evaluate = evaluate_metrics


def gold_pairs(recipe: Recipe, model_dir: Path, count: int) -> list[dict[str, str]]:
    """Gold answers of the train split (chosen) against what `model_dir` answers (rejected)."""
    from kollm.eval import gold
    from kollm.eval.evaluate import model_format

    rows = read_jsonl(recipe.split_path("train"), count)
    fmt = model_format(model_dir, recipe_format(recipe))
    tokens, trust = recipe.eval.decoding.max_new_tokens, recipe.model.trust_remote_code
    return gold.gold_pairs(model_dir, fmt, rows, tokens, trust)


def _loop_recipe(recipe: Recipe, loop_dir: Path, start_from: Path) -> Recipe:
    """The recipe the candidate trains with: the loop's method, beta, steps and rate, from
    the production model, into its own output dir."""
    lp = recipe.loop
    train = recipe.train.model_copy(
        update={
            "method": lp.method,
            "beta": lp.beta,
            "max_steps": lp.max_steps,
            "learning_rate": lp.learning_rate,
            "save_steps": max(lp.max_steps, 1),
            "eval_steps": None,
            # the gate judges the candidate; the recipe's evaluation while training needs a
            # dev split the feedback export does not have, and its method may not support it
            "eval_generation": type(recipe.train.eval_generation)(),
            "early_stopping": type(recipe.train.early_stopping)(),
        }
    )
    model = recipe.model.model_copy(update={"base": str(start_from)})
    return recipe.model_copy(update={"output_dir": str(loop_dir), "train": train, "model": model})


def _served_tasks(recipe: Recipe, production: ModelVersion) -> dict:
    """The task services production answered under, as `kollm serve` layers them: shipped,
    the version's recorded recipe, then this recipe's `serve.tasks`."""
    return task_layers(recorded_tasks(production.recipe_text), dict(recipe.serve.tasks))


def _train_candidate(
    recipe: Recipe, rows, start_from: Path, loop_dir: Path, tasks: dict | None = None
) -> tuple[Path, str]:
    """Export the feedback and train a candidate from `start_from` through `kollm train`'s
    dispatch (`run_training`)."""
    from kollm.train import run_training

    lp = recipe.loop
    manifest = export_feedback(rows, lp.method, loop_dir / "export", recipe.data.kind, tasks)
    data = read_jsonl(loop_dir / "export" / manifest["file"])
    if lp.method == "dpo" and lp.gold_pairs:
        data += gold_pairs(recipe, start_from, lp.gold_pairs)
    result = run_training(_loop_recipe(recipe, loop_dir, start_from), splits={"train": data})
    return result.model_dir, manifest["sha256"]


def _nothing_to_train(recipe: Recipe, every: list[dict[str, Any]], since: str | None) -> str:
    said = f"{recipe.model_name}: no corrections since the last decision ({since or 'ever'})"
    if recipe.loop.train_on == "all":
        return f"{said}: nothing to train"
    waiting = sum(
        1
        for r in every
        if r["correction"]
        and not r.get("reviewed_at")
        and (since is None or r["created_at"] >= since)
    )
    return (
        f"{said} that a reviewer confirmed: nothing to train (loop.train_on=reviewed;"
        f" {waiting} corrections await review in the console's feedback queue)"
    )


def _production(registry: Registry, name: str, alias: str) -> ModelVersion:
    try:
        return registry.checkout(f"{name}@{alias}")
    except ValueError as err:
        raise LoopError(
            f"{name}@{alias}: {err}; run the recipe with registry.alias={alias} first"
        ) from err


def _alive(pid: int) -> bool:
    if pid <= 0:  # kill(0) would signal our own process group
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # someone else's process: it exists
        return True
    return True


def interrupted_runs(recipe: Recipe) -> list[dict[str, Any]]:
    """Loop runs of `recipe` that ended without a decision (killed mid-way): each is logged
    once and its marker renamed. What they registered stays in the registry, unpromoted
    unless the kill fell between the promotion and the record."""
    found = []
    for marker in sorted((recipe.run_dir / "loop").glob(f"*/{RUNNING}")):
        try:
            state = json.loads(marker.read_text())
        except ValueError:  # killed while writing it
            state = {}
        if state.get("host") == socket.gethostname() and _alive(state.get("pid", 0)):
            continue  # another loop of the recipe is running now
        state["run_dir"] = str(marker.parent)
        marker.rename(marker.with_name("INTERRUPTED.json"))
        log.warning("loop: found an interrupted run with no decision: %s", state)
        found.append(state)
    return found


def _mark(loop_dir: Path, **state: Any) -> None:
    """What the running loop has done so far, for the next run to find if this one dies."""
    loop_dir.mkdir(parents=True, exist_ok=True)
    marker = loop_dir / RUNNING
    old = json.loads(marker.read_text()) if marker.exists() else {}
    base = {"pid": os.getpid(), "host": socket.gethostname(), "started": _now()}
    marker.write_text(json.dumps({**base, **old, **state}))


def _gated(recipe: Recipe, registry: Registry, dirs: dict[str, Path], seconds: dict) -> dict:
    """Measure candidate and production, and the gate's decision: what the loop records."""
    judge = judge_client(recipe, registry.home)
    cand, prod, judged, metrics = measure_pair(
        recipe, dirs, dirs["loop"], judge, seconds, evaluate=_evaluate, refusal=refusal_rate
    )
    decision = decide(recipe.loop.gate, cand, prod, judged)
    metrics["gate"] = decision.as_dict()
    metrics["gate_failures"] = decision.failures  # what records before the gate record held
    return metrics


def _retrain(
    recipe: Recipe, registry: Registry, production: ModelVersion, rows, reason: str, loop_dir
) -> tuple[LoopDecision, int | None, str]:
    """Train a candidate from production, evaluate both, gate, and promote a passing one."""
    seconds: dict[str, float] = {}
    started = time.monotonic()
    prod_dir = Path(production.artifact_path)
    tasks = _served_tasks(recipe, production)
    candidate_dir, export_sha = _train_candidate(recipe, rows, prod_dir, loop_dir, tasks)
    seconds["retrain"] = time.monotonic() - started
    log.info("loop: candidate trained in %.1f s; evaluating both", seconds["retrain"])
    dirs = {"production": prod_dir, "candidate": Path(candidate_dir), "loop": loop_dir}
    metrics = _gated(recipe, registry, dirs, seconds)
    metrics["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
    passed = metrics["gate"]["passed"]
    decision = LoopDecision(
        "promoted" if passed else "rejected", reason, production.ref, None, metrics
    )
    if not passed:
        return decision, None, export_sha
    version = registry.register(
        production.name,
        candidate_dir,
        base_model=production.ref,
        method=recipe.loop.method,
        data_manifest=export_sha,
        recipe_text=production.recipe_text,
        metrics=metrics["candidate"],
        parent_version=production.version,
    )
    _mark(loop_dir, registered=version.ref)
    registry.promote(production.name, version.version, recipe.loop.alias)
    decision.candidate = version.ref
    return decision, version.version, export_sha


def _attempt(recipe, registry, production, rows, reason: str):
    """_retrain, or a `failed` decision with the error (production stays where it was)."""
    loop_dir = recipe.run_dir / "loop" / dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    _mark(loop_dir, production=production.ref, trigger=reason)
    log.info(
        "loop: fired (%s); retraining from %s with %s", reason, production.ref, recipe.loop.method
    )
    try:
        return (*_retrain(recipe, registry, production, rows, reason, loop_dir), loop_dir)
    except Exception as err:  # a schedule outlives a failed run: record it, keep production
        log.exception(
            "loop: the run in %s failed; %s stays in production", loop_dir, production.ref
        )
        error = {"error": f"{type(err).__name__}: {err}", "run_dir": str(loop_dir)}
        return LoopDecision("failed", reason, production.ref, None, error), None, None, loop_dir


def run_loop(recipe: Recipe, registry: Registry | None = None, force: bool = False) -> LoopDecision:
    """Judge the watch of a version the loop promoted (a rollback ends the run there), then
    check the trigger; retrain, evaluate both, gate, and promote or reject. Recorded as
    `skipped` when it fires with nothing to train on, `failed` when training or evaluation
    raises; 'not triggered' is only returned (a schedule checks often)."""
    registry = registry or Registry()
    name = recipe.model_name
    production = _production(registry, name, recipe.loop.alias)
    watched = check_watch(recipe, registry, production)
    if watched is not None and watched.decision == "rolled back":
        return watched  # the restored version earns its own ratings before the trigger counts
    found = interrupted_runs(recipe)
    since = last_decision_time(registry, name)
    promoted = promoted_at(registry, production, recipe.loop.alias)
    start = max((t for t in (promoted, since) if t), default=None)
    # Before reading: a review saved while this run trains (hours) counts for the next one.
    read_at = _now()
    every = FeedbackStore(registry.home).rows(name)
    rows = training_rows(recipe, every, since)
    ratings = earned(every, production, start)
    reason, seen = check_trigger(recipe, earned(rows, production, promoted), ratings)
    if reason is None and not force:
        why = f"{production.ref} since {start or 'ever'}: {seen}"
        log.info("loop: not triggered (%s)", why)
        return LoopDecision("not triggered", f"no trigger rule met by {why}", production.ref)
    reason = reason or "forced"
    loop_dir, cand_version, sha = None, None, None
    if not rows or (recipe.loop.method != "kto" and not any(r["correction"] for r in rows)):
        skip = {"reason": _nothing_to_train(recipe, every, since)}
        log.warning("loop: skipped: %s", skip["reason"])
        decision = LoopDecision("skipped", reason, production.ref, None, skip)
    else:
        decision, cand_version, sha, loop_dir = _attempt(recipe, registry, production, rows, reason)
    if found:
        decision.metrics["interrupted"] = found
    record(registry, recipe, decision, production, cand_version, sha, read_at)
    if loop_dir is not None:  # decided: the next run finds nothing to report
        (loop_dir / RUNNING).unlink(missing_ok=True)
    return decision
