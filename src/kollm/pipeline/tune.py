"""`kollm tune`: Optuna over named recipe fields, with the eval metric as the objective.

The study lives in SQLite under KOLLM_HOME (`tune.db`), named after the recipe, so a search that
stops resumes where it was. The data stage runs once; each trial trains into its own dir. A trial
whose final training loss is worse than the median of the finished trials is pruned before its
(costlier) evaluation. The best trial is written as a table (JSON) and a history plot (PNG).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kollm.config import Recipe, SearchSpace, load_recipe
from kollm.data.io import atomic_path, write_json
from kollm.registry import Registry


@dataclass
class TuneResult:
    best_value: float
    best_params: dict[str, Any]
    trials: int
    pruned: int
    files: dict[str, Path]


def suggest(trial, name: str, space: SearchSpace) -> Any:
    """Draw one value of a search space for an Optuna trial."""
    if space.type == "categorical":
        return trial.suggest_categorical(name, space.choices)
    if space.type == "int":
        return trial.suggest_int(name, int(space.low), int(space.high))
    return trial.suggest_float(name, space.low, space.high, log=space.type == "log_float")


def _trial(recipe_path: Path, base: Recipe, trial, overrides: list[str]) -> float:
    import optuna

    from kollm.eval.evaluate import evaluate_recipe
    from kollm.train import run_training

    params = {name: suggest(trial, name, space) for name, space in base.tune.space.items()}
    trial_dir = base.run_dir / "tune" / f"trial-{trial.number:03d}"
    recipe = load_recipe(
        recipe_path,
        [
            *overrides,
            *(f"{k}={v}" for k, v in params.items()),
            f"output_dir={trial_dir}",
            f"data.output_dir={base.data_dir}",
        ],
    )
    result = run_training(recipe)
    final = [e["loss"] for e in result.losses if "loss" in e]
    if base.tune.prune and final:
        trial.report(-final[-1], step=0)  # the study maximises, so the pruner sees minus the loss
        if trial.should_prune():
            raise optuna.TrialPruned()
    ev = evaluate_recipe(recipe, result.model_dir, trial_dir / "eval")
    return float(ev.metrics["model"][base.tune.metric])


def tune(
    recipe_path: Path,
    trials: int | None = None,
    overrides: list[str] | None = None,
    registry: Registry | None = None,
) -> TuneResult:
    """Run the study's missing trials (or `trials` more) and summarise it."""
    import optuna

    from kollm.data.pipeline import prepare

    overrides = overrides or []
    base = load_recipe(recipe_path, overrides)
    if base.train is None or base.eval is None:
        raise ValueError("kollm tune needs a recipe with train and eval sections")
    if not base.split_path("train").exists():
        prepare(base.data, base.data_dir)
    home = (registry or Registry()).home
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=base.name,
        storage=f"sqlite:///{home / 'tune.db'}",
        load_if_exists=True,
        direction="maximize",
        # A trial reports its final training loss; the median pruner compares it with the others'.
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
    )
    study.optimize(
        lambda trial: _trial(recipe_path, base, trial, overrides),
        n_trials=trials if trials is not None else missing_trials(study, base.tune.trials),
    )
    return summarise(study, base.run_dir / "tune")


def missing_trials(study, total: int) -> int:
    """How many trials a study lacks of `total`: finished and pruned ones count, failed and
    interrupted ones are run again."""
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return max(total - len(study.get_trials(deepcopy=False, states=states)), 0)


def summarise(study, out_dir: Path) -> TuneResult:
    """The best trial, every trial's value, and the history plot."""
    import optuna

    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    if not done:
        raise ValueError("no trial completed")
    best = study.best_trial
    rows = [{"trial": t.number, "value": t.value, **t.params} for t in done]
    files = {"summary": out_dir / "summary.json", "plot": out_dir / "history.png"}
    write_json(
        files["summary"],
        {
            "best": {"trial": best.number, "value": best.value, "params": best.params},
            "trials": rows,
            "pruned": [t.number for t in pruned],
        },
    )
    _plot(rows, files["plot"])
    return TuneResult(best.value, best.params, len(study.trials), len(pruned), files)


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    xs = [r["trial"] for r in rows]
    ys = [r["value"] for r in rows]
    best = [max(ys[: i + 1]) for i in range(len(ys))]
    ax.scatter(xs, ys, label="trial")
    ax.plot(xs, best, color="#c0504d", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("objective")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
