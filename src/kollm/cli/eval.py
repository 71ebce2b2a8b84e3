"""`kollm eval [run]|rouge|bench`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from kollm.cli.common import (
    OverridesArg,
    _load,
    console,
    eval_app,
    fail,
    progress_bar,
    user_errors,
)
from kollm.config import EvalConfig, Recipe
from kollm.data.io import DataError


def _metrics_table(metrics: dict[str, Any]) -> Table:
    from kollm.eval.report import score_rows

    table = Table(title=f"ROUGE on {metrics['examples']} examples (F1; score = mean x 100)")
    for column in ("", "ROUGE-1", "ROUGE-2", "ROUGE-L", "score"):
        table.add_column(column, justify="right")
    for row in score_rows(metrics):
        table.add_row(*row)
    return table


@eval_app.command("run", hidden=True)
def eval_run(
    recipe: Annotated[
        Path | None, typer.Argument(help="Recipe YAML file.", show_default=False)
    ] = None,
    overrides: OverridesArg = None,
    model: Annotated[Path | None, typer.Option(help="Model dir (without a recipe).")] = None,
    data: Annotated[
        Path | None, typer.Option(help="JSONL records to evaluate (without a recipe).")
    ] = None,
    kind: Annotated[str, typer.Option(help="Record kind of --data.")] = "dialogue_summary",
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Output dir (without a recipe).")
    ] = Path("runs/eval"),
    against: Annotated[
        str | None,
        typer.Option(
            help="Gate the recipe's trained model against this one (a model dir, NAME:VERSION"
            " or NAME@ALIAS) with the recipe's loop.gate, as the loop does: every reason is"
            " printed and written to gate.json; exit 1 when the gate fails.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Generate for the eval split and score ROUGE beside the lead baseline."""
    from kollm.eval.evaluate import evaluate_model, model_format, read_records
    from kollm.prompts import recipe_format, resolve_format

    if against is not None and recipe is None:
        fail("--against gates a RECIPE's model: give the recipe (its loop.gate)")
    with user_errors():
        if recipe is not None:
            loaded = _load(recipe, overrides)
            if against is not None:
                _gate_against(loaded, against)
            cfg = loaded.eval or EvalConfig()
            model_dir, data_file = (
                loaded.train_dir / "model",
                loaded.split_path(cfg.split),
            )
            output = loaded.eval_dir
            fmt = model_format(model_dir, recipe_format(loaded))
        elif model is not None and data is not None:
            cfg, model_dir, data_file = EvalConfig(), model, data
            fmt = model_format(model_dir, resolve_format(kind))
        else:
            fail("give a RECIPE, or both --model DIR and --data FILE")
        records = read_records(data_file, cfg.max_samples)
        with progress_bar("generating", len(records)) as advance:
            result = evaluate_model(model_dir, records, fmt, cfg, output, advance)
    if "model" in result.metrics:
        console.print(_metrics_table(result.metrics))
    if "perplexity" in result.metrics:
        console.print(f"perplexity: {result.metrics['perplexity']:.2f}")
    for name, path in result.files.items():
        console.print(f"{name}: {path}")


def _gate_against(loaded: Recipe, against: str) -> None:
    """Measure the recipe's model and `against` on the same eval split (and safety set and
    judge), decide with `loop.gate`, write the record to gate.json; exit 1 when it fails."""
    from kollm.data.io import write_json
    from kollm.eval.gate import decide
    from kollm.eval.measure import judge_client, measure_pair
    from kollm.registry import Registry

    registry = Registry()
    prod_dir = Path(against)
    if not prod_dir.is_dir():
        prod_dir = Path(registry.checkout(against).artifact_path)
    cand_dir = loaded.train_dir / "model"
    if not cand_dir.is_dir():
        fail(f"{cand_dir}: no trained model; run `kollm train` first")
    dirs = {"candidate": cand_dir, "production": prod_dir}
    judge = judge_client(loaded, registry.home)
    cand, prod, judged, details = measure_pair(loaded, dirs, loaded.eval_dir, judge, {})
    decision = decide(loaded.loop.gate, cand, prod, judged)
    record = {**details, "gate": decision.as_dict(), "models": {k: str(v) for k, v in dirs.items()}}
    write_json(loaded.eval_dir / "gate.json", record)
    verdict = "passed" if decision.passed else "failed"
    console.print(f"gate: {verdict} ({cand_dir} against {against})", markup=False)
    for reason in decision.reasons:
        console.print(f"  {'pass' if reason.passed else 'FAIL'}  {reason.says}", markup=False)
    console.print(f"gate.json: {loaded.eval_dir / 'gate.json'}")
    raise typer.Exit(0 if decision.passed else 1)


def _rows_with(path: Path, required: tuple[str, ...], one_of: tuple[str, ...] = ()) -> list[dict]:
    """JSONL rows that have every `required` field and one of `one_of`; else FILE:LINE error."""
    from kollm.data.io import Malformed, read_rows

    rows = []
    for line, row in read_rows(path, "jsonl"):
        missing = [] if isinstance(row, Malformed) else [f for f in required if f not in row]
        if isinstance(row, Malformed) or missing or (one_of and not any(f in row for f in one_of)):
            reason = row if isinstance(row, Malformed) else f"needs {', '.join(missing or one_of)}"
            raise DataError(f"{path}:{line}: {reason}")
        rows.append(row)
    return rows


@eval_app.command("rouge")
def eval_rouge(
    pred: Annotated[Path, typer.Option(help="JSONL rows with id and prediction.")],
    ref: Annotated[Path, typer.Option(help="JSONL rows with id and references (list) or summary.")],
    tokenize: Annotated[str, typer.Option(help="morpheme or whitespace.")] = "morpheme",
    multi_ref: Annotated[str, typer.Option(help="max or mean over references.")] = "max",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Korean ROUGE-1/2/L F1 on files alone."""
    from kollm.eval.rouge import corpus_rouge

    if tokenize not in ("morpheme", "whitespace") or multi_ref not in ("max", "mean"):
        fail("--tokenize is morpheme or whitespace; --multi-ref is max or mean")
    with user_errors():
        preds = {row["id"]: row["prediction"] for row in _rows_with(pred, ("id", "prediction"))}
        refs = {
            row["id"]: row.get("references") or [row["summary"]]
            for row in _rows_with(ref, ("id",), one_of=("references", "summary"))
        }
    missing = sorted(set(refs) - set(preds), key=str)
    if missing:
        fail(f"{pred}: no prediction for id(s) {missing[:5]}")
    ids = list(refs)
    refs_list = [r if isinstance(r, list) else [r] for r in (refs[i] for i in ids)]
    totals, _ = corpus_rouge([preds[i] for i in ids], refs_list, tokenize, multi_ref)
    if as_json:
        print(json.dumps(totals))
        return
    console.print(_metrics_table({"examples": len(ids), "model": totals}))


@eval_app.command("bench")
def eval_bench(
    ref: Annotated[str, typer.Argument(help="NAME, NAME:VERSION or NAME@ALIAS.")],
    tasks: Annotated[
        str, typer.Option(help="lm-eval tasks, comma-separated (kollm_ko_mc is bundled).")
    ] = "kollm_ko_mc",
    limit: Annotated[int | None, typer.Option(help="At most this many examples a task.")] = None,
    include_path: Annotated[
        list[Path] | None, typer.Option(help="A dir of your own lm-eval task YAMLs.")
    ] = None,
    engine: Annotated[str, typer.Option(help="The engine that serves it while measured.")] = (
        "ctranslate2"
    ),
    num_fewshot: Annotated[int | None, typer.Option(help="Few-shot examples.")] = None,
    chat: Annotated[
        bool,
        typer.Option(help="Through /v1/chat/completions (generation tasks, e.g. kollm_ko_gen)."),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Korean benchmarks through lm-eval against the served model (`pip install
    'kollm[bench]'`); the scores are recorded on the registry version."""
    from kollm.eval.bench import BenchError
    from kollm.pipeline.bench import bench_version

    names = [t.strip() for t in tasks.split(",") if t.strip()]
    with user_errors():
        try:
            result = bench_version(
                ref, names, None, engine, limit, list(include_path or []), num_fewshot, chat
            )
        except BenchError as err:
            fail(str(err))
    if as_json:
        print(json.dumps(result.results))
        return
    table = Table(title=f"{result.ref} served by {result.engine}, through lm-eval")
    for column in ("task", "metric", "value"):
        table.add_column(column)
    for task, metrics in result.results.items():
        for metric, value in metrics.items():
            table.add_row(task, metric, f"{value:.4f}")
    console.print(table)
    console.print(f"recorded on {result.ref}: kollm registry show {result.ref}")
