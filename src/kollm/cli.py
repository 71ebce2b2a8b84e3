"""The `kollm` command: each subcommand parses its arguments and calls one stage function."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from typer.core import TyperGroup

from kollm import __version__
from kollm.config import EvalConfig, Recipe, RecipeError, load_recipe, recipe_text
from kollm.data.io import DataError
from kollm.orchestrate.loop import LoopError
from kollm.prompts import PromptError
from kollm.registry import Registry, RegistryError


class DefaultCommandGroup(TyperGroup):
    """A group whose first argument, when it names no subcommand, goes to `run`:
    `kollm eval RECIPE` is `kollm eval run RECIPE`, beside `kollm eval rouge ...`."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    help="kollm: run Korean LLMs in-house, from data to serving.", no_args_is_help=True
)
data_app = typer.Typer(help="The data stage: clean, de-identify, dedup, filter, split, report.")
recipe_app = typer.Typer(help="Recipes: check them and read their schema.")
eval_app = typer.Typer(
    cls=DefaultCommandGroup,
    no_args_is_help=True,
    help="Evaluate: `kollm eval RECIPE`, `kollm eval --model DIR --data FILE`, `kollm eval rouge`.",
)
registry_app = typer.Typer(
    help="The model registry: versions, lineage, aliases.", no_args_is_help=True
)
app.add_typer(data_app, name="data")
app.add_typer(recipe_app, name="recipe")
app.add_typer(eval_app, name="eval")
feedback_app = typer.Typer(
    help="Feedback on served answers: add, stats, export.", no_args_is_help=True
)
app.add_typer(registry_app, name="registry")
app.add_typer(feedback_app, name="feedback")
loop_app = typer.Typer(
    cls=DefaultCommandGroup,
    no_args_is_help=True,
    help="The feedback loop: `kollm loop RECIPE` checks the trigger and acts; `loop history`.",
)
app.add_typer(loop_app, name="loop")

console = Console()
err_console = Console(stderr=True)

RecipeArg = Annotated[Path, typer.Argument(help="Recipe YAML file.", show_default=False)]
OverridesArg = Annotated[
    list[str] | None, typer.Argument(help="key.path=value overrides, e.g. data.dedup.threshold=0.8")
]


def fail(message: str, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """Errors in the user's input exit 2 with their message, without a traceback."""
    try:
        yield
    except (
        RecipeError,
        DataError,
        RegistryError,
        FileNotFoundError,
        LoopError,
        PromptError,
    ) as err:
        fail(str(err))


@contextmanager
def progress_bar(description: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, console=err_console, transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)


def _load(recipe: Path, overrides: list[str] | None) -> Recipe:
    with user_errors():
        return load_recipe(recipe, overrides)


def _log_to_stderr() -> None:
    """kollm's progress lines (stages, training steps) on stderr, above any Rich bar."""
    import logging

    from rich.logging import RichHandler

    logger = logging.getLogger("kollm")
    if not logger.handlers:
        handler = RichHandler(console=err_console, show_path=False, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


@app.callback(invoke_without_command=True)
def main(
    version: Annotated[bool, typer.Option("--version", help="Print the version.")] = False,
) -> None:
    _log_to_stderr()
    if version:
        console.print(f"kollm {__version__}")
        raise typer.Exit()


# --- data ------------------------------------------------------------------------------------


def _steps_table(stats: dict[str, Any]) -> Table:
    table = Table(title="Data stage")
    for column in ("step", "seen", "kept", "dropped", "reasons / changes"):
        table.add_column(
            column, justify="left" if column in ("step", "reasons / changes") else "right"
        )
    for s in stats["steps"]:
        detail = ", ".join(f"{k} {v}" for k, v in {**s["reasons"], **s["changes"]}.items())
        table.add_row(s["step"], str(s["seen"]), str(s["kept"]), str(s["dropped"]), detail or "-")
    return table


def run_data_prepare(recipe: Recipe) -> dict[str, Any]:
    from kollm.data.pipeline import prepare

    if recipe.data is None:
        fail("the recipe has no 'data' section")
    with user_errors(), progress_bar("reading and cleaning") as advance:
        result = prepare(recipe.data, recipe.data_dir, advance)
    console.print(_steps_table(result.stats))
    output = ", ".join(f"{k} {v}" for k, v in result.stats["output"].items())
    console.print(
        f"input {result.stats['input']} -> output {output}; bad lines {result.stats['bad_lines']}"
    )
    console.print(f"report: {result.files['report_html']}  stats: {result.files['stats']}")
    return result.stats


@data_app.command("prepare")
def data_prepare(
    recipe: RecipeArg,
    overrides: OverridesArg = None,
    skip_bad_lines: Annotated[
        bool, typer.Option(help="Skip malformed lines (written to bad_lines.jsonl).")
    ] = False,
) -> None:
    """Run the recipe's data stage: normalise, mask PII, filter, dedup, split, report."""
    extra = ["data.skip_bad_lines=true"] if skip_bad_lines else []
    run_data_prepare(_load(recipe, [*(overrides or []), *extra]))


@data_app.command("clean")
def data_clean(
    input_path: Annotated[
        Path, typer.Argument(help="Input JSONL, CSV or Parquet.", show_default=False)
    ],
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Output JSONL.", show_default=False)
    ],
    field: Annotated[str, typer.Option("--field", help="The text field to clean.")] = "text",
    skip_bad_lines: Annotated[
        bool, typer.Option(help="Skip malformed lines (kept in a side file).")
    ] = False,
) -> None:
    """Normalise, mask PII and dedup one field of each record, keeping the other fields."""
    from kollm.data.clean import clean_file

    with user_errors(), progress_bar("cleaning") as advance:
        summary = clean_file(input_path, output, field, skip_bad_lines, advance)
    console.print(_steps_table(summary))
    console.print(f"kept {summary['kept']} records -> {output}")


@data_app.command("sample")
def data_sample(
    out_dir: Annotated[Path, typer.Argument(help="Directory for the sample files.")] = Path(
        "data/sample"
    ),
) -> None:
    """Write the bundled Korean sample data (seeded, so always the same files)."""
    from kollm.samples import write_samples

    for name, count in write_samples(out_dir).items():
        console.print(f"{out_dir / name}: {count} records")


# --- recipes ---------------------------------------------------------------------------------


@recipe_app.command("check")
def recipe_check(recipe: RecipeArg, overrides: OverridesArg = None) -> None:
    """Validate a recipe (with overrides) and print it with every default filled in."""
    loaded = _load(recipe, overrides)
    console.print_json(loaded.model_dump_json())


@recipe_app.command("schema")
def recipe_schema(
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON schema.")] = False,
) -> None:
    """Every recipe field with its type, default and description."""
    from kollm.docs import schema_rows

    if as_json:
        console.print_json(json.dumps(Recipe.model_json_schema()))
        return
    table = Table(title="Recipe fields")
    for column in ("field", "type", "default", "description"):
        table.add_column(column)
    for row in schema_rows(Recipe):
        table.add_row(*row)
    console.print(table)


@recipe_app.command("docs")
def recipe_docs(
    output: Annotated[Path, typer.Option("-o", "--output", help="Markdown file to write.")] = Path(
        "docs/recipe.md"
    ),
) -> None:
    """Write the recipe reference (docs/recipe.md) from the field descriptions."""
    from kollm.data.io import write_text
    from kollm.docs import recipe_markdown

    write_text(output, recipe_markdown())
    console.print(f"wrote {output}")


# --- train -------------------------------------------------------------------------------------


def _train_table(summary: dict[str, Any]) -> str:
    first, last = summary.get("first_loss"), summary.get("last_loss")
    losses = f"{first:.3f} -> {last:.3f}" if first is not None and last is not None else "-"
    steps = summary["global_step"]
    processes = summary.get("processes", 1)
    on = f" on {processes} processes" if processes > 1 else ""
    return f"{summary['method']} on {summary['base_model']}{on}: {steps} steps, loss {losses}"


@app.command("train")
def train(
    recipe: RecipeArg,
    overrides: OverridesArg = None,
    resume: Annotated[
        bool, typer.Option(help="Continue from the newest complete checkpoint.")
    ] = False,
) -> None:
    """Train the recipe's model: SFT, seq2seq, pretraining, DPO, RM or GRPO; full or PEFT."""
    from kollm.train import run_training

    loaded = _load(recipe, overrides)
    with user_errors():
        result = run_training(loaded, resume=resume)
    console.print(_train_table(result.summary()))
    console.print(f"model: {result.model_dir}  loss curve: {result.train_dir / 'loss.png'}")


@app.command("export")
def export(
    source: Annotated[
        str, typer.Argument(help="A LoRA adapter dir, or NAME:VERSION / NAME@ALIAS.")
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="Directory for the merged model.")],
) -> None:
    """Merge a LoRA adapter into its base model and save a standalone model."""
    from kollm.train.export import merge_lora

    with user_errors():
        path = Path(source)
        adapter = path if path.exists() else Path(Registry().get(source).artifact_path)
        console.print(f"merged model: {merge_lora(adapter, output)}")


# --- eval --------------------------------------------------------------------------------------


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
) -> None:
    """Generate for the eval split and score ROUGE beside the lead baseline."""
    from kollm.eval.evaluate import evaluate_model, model_format, read_records
    from kollm.prompts import recipe_format, resolve_format

    with user_errors():
        if recipe is not None:
            loaded = _load(recipe, overrides)
            cfg = loaded.eval or EvalConfig()
            model_dir, data_file = (
                loaded.train_dir / "model",
                loaded.data_dir / f"{cfg.split}.jsonl",
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


# --- registry ----------------------------------------------------------------------------------


@registry_app.command("list")
def registry_list(
    name: Annotated[str | None, typer.Argument(help="Only this model.")] = None,
) -> None:
    """Every registered version with its aliases and headline score."""
    table = Table(title=f"Registry {Registry().path}")
    for column in ("model", "version", "aliases", "method", "base", "score", "created"):
        table.add_column(column)
    for v in Registry().list(name):
        score = v.metrics.get("score")
        table.add_row(
            v.name,
            str(v.version),
            ", ".join(v.aliases),
            v.method or "-",
            v.base_model or "-",
            f"{score:.2f}" if isinstance(score, int | float) else "-",
            v.created_at,
        )
    console.print(table)


@registry_app.command("show")
def registry_show(
    ref: Annotated[str, typer.Argument(help="NAME, NAME:VERSION or NAME@ALIAS.")],
) -> None:
    """One version with its full lineage (recipe text included)."""
    with user_errors():
        version = Registry().get(ref)
    console.print_json(json.dumps(version.__dict__, default=str))


@registry_app.command("promote")
def registry_promote(
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[int, typer.Argument(help="Version to promote.")],
    alias: Annotated[str, typer.Option(help="Alias to move.")] = "production",
) -> None:
    """Point an alias (default production) at a version."""
    with user_errors():
        moved = Registry().promote(name, version, alias)
    console.print(f"{name}@{alias} -> {moved.ref}")


@registry_app.command("rollback")
def registry_rollback(
    name: Annotated[str, typer.Argument(help="Model name.")],
    alias: Annotated[str, typer.Option(help="Alias to move back.")] = "production",
) -> None:
    """Return an alias to the version it pointed at before its latest promotion."""
    with user_errors():
        moved = Registry().rollback(name, alias)
    console.print(f"{name}@{alias} -> {moved.ref}")


@registry_app.command("log")
def registry_log(name: Annotated[str, typer.Argument(help="Model name.")]) -> None:
    """Every alias move of a model (append-only)."""
    table = Table(title=f"Alias moves of {name}")
    for column in ("at", "alias", "action", "from", "to"):
        table.add_column(column)
    for e in Registry().alias_log(name):
        table.add_row(
            e["at"], e["alias"], e["action"], str(e["from_version"] or "-"), str(e["to_version"])
        )
    console.print(table)


@registry_app.command("verify")
def registry_verify(
    ref: Annotated[str, typer.Argument(help="NAME, NAME:VERSION or NAME@ALIAS.")],
) -> None:
    """Check a version's stored files against the sha256 recorded when it was registered."""
    with user_errors():
        version = Registry().checkout(ref)
    console.print(
        f"{version.ref}: {len(version.files or {})} files match ({version.artifact_path})"
    )


@registry_app.command("gc")
def registry_gc(
    apply: Annotated[
        bool, typer.Option("--apply", help="Delete them (default: list only).")
    ] = False,
) -> None:
    """Stored artifacts that no version points at; a dry run unless --apply."""
    unused = Registry().gc(apply=apply)
    for path in unused:
        console.print(f"{'removed' if apply else 'unused'}: {path}")
    verb = "removed" if apply else "would remove (run with --apply)"
    console.print(f"{len(unused)} unused artifact(s) {verb}" if unused else "nothing to collect")


# --- run and demo ------------------------------------------------------------------------------


def _run_table(result) -> Table:
    table = Table(title=f"kollm run: {result.recipe.name}")
    table.add_column("stage")
    table.add_column("")
    table.add_column("result")
    table.add_column("time", justify="right")
    for stage in result.stages:
        status = "skipped (unchanged)" if stage.skipped else "ran"
        line = _stage_line(stage.name, stage.summary)
        table.add_row(stage.name, status, line, f"{stage.seconds:.0f} s")
    return table


def _stage_line(name: str, s: dict[str, Any]) -> str:
    if name == "data":
        dropped = sum(step["dropped"] for step in s["steps"])
        kept = ", ".join(f"{k} {v}" for k, v in s["output"].items())
        return f"read {sum(s['input'].values())}, dropped {dropped}, kept {kept}"
    if name == "train":
        return _train_table(s)
    if name == "eval":
        parts = []
        if "model" in s:
            parts.append(f"model ROUGE score {s['model']['score']:.2f}")
        if "baseline_lead" in s:
            parts.append(f"lead baseline {s['baseline_lead']['score']:.2f}")
        if "perplexity" in s:
            parts.append(f"perplexity {s['perplexity']:.2f}")
        return ", ".join(parts)
    return f"{s['ref']} {', '.join(s['aliases'])}"


def _progress_factory(description: str, total: int | None):
    return progress_bar(description, total)


def run_and_report(recipe_path: Path, overrides: list[str] | None, force: bool):
    from kollm.orchestrate.pipeline import run_recipe

    loaded = _load(recipe_path, overrides)
    # The registry records the recipe as it ran: the file, and the overrides given with it.
    text = recipe_text(recipe_path) + "".join(f"# override: {o}\n" for o in overrides or [])
    with user_errors():
        result = run_recipe(loaded, text, force, progress=_progress_factory)
    console.print(_run_table(result))
    return result


@app.command("run")
def run(
    recipe: RecipeArg,
    overrides: OverridesArg = None,
    force: Annotated[bool, typer.Option(help="Run every stage, changed or not.")] = False,
) -> None:
    """data -> train -> eval -> register; a stage whose inputs did not change is skipped."""
    run_and_report(recipe, overrides, force)


@app.command("demo")
def demo(
    recipe: Annotated[Path, typer.Option(help="The demo recipe.")] = Path("recipes/demo.yaml"),
    force: Annotated[bool, typer.Option(help="Run every stage, changed or not.")] = False,
    loop: Annotated[
        bool,
        typer.Option("--loop", help="Then serve it, post scripted feedback, and run the loop."),
    ] = False,
) -> None:
    """The embedded default: a scratch model trained on the bundled Korean dialogues."""
    import time

    started = time.monotonic()
    console.rule("kollm demo: data -> train -> eval -> register, on this CPU, offline")
    result = run_and_report(recipe, None, force)
    times = {s.name: s.seconds for s in result.stages}
    r = result.recipe
    console.print(f"data report:  {r.data_dir / 'report' / 'report.html'}")
    if r.train is not None:
        console.print(f"loss curve:   {r.train_dir / 'loss.png'}")
    if r.eval is not None:
        console.print(f"eval report:  {r.eval_dir / 'report.html'}")
    if result.version is not None:
        console.print(
            f"registry:     {result.version.ref} aliases {result.version.aliases} "
            f"({Registry().path}); try: kollm registry list"
        )
    if loop:
        from kollm.orchestrate.demo import demo_loop

        console.rule("kollm demo --loop: serve, feedback, retrain, gate")
        loop_started = time.monotonic()
        with user_errors():
            corrections, decision = demo_loop(r, Registry())
        times["loop"] = time.monotonic() - loop_started
        console.print(f"scripted users sent {corrections} corrections through POST /v1/feedback")
        if decision.decision != "not triggered":
            console.print(f"the trigger fired by itself: {decision.trigger}")
        _print_decision(r, decision)
    spent = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in times.items())
    console.print(f"demo: {time.monotonic() - started:.0f} s in all ({spent})")


# --- serve -------------------------------------------------------------------------------------


def _pairs(values: list[str] | None, what: str) -> dict[str, str]:
    pairs = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep:
            fail(f"{what} {item!r}: expected NAME=VALUE")
        pairs[key] = value
    return pairs


def _api_keys(api_key: str | None, api_key_file: Path | None) -> list[str]:
    import os

    keys = [api_key] if api_key else []
    if api_key_file is not None:
        keys += [line.strip() for line in api_key_file.read_text().splitlines() if line.strip()]
    if os.environ.get("KOLLM_API_KEY"):
        keys.append(os.environ["KOLLM_API_KEY"])
    return keys


def _admin_keys(admin_key: str | None) -> list[str]:
    import os

    return [k for k in (admin_key, os.environ.get("KOLLM_ADMIN_KEY")) if k]


def _guards(domains: dict) -> dict:
    from kollm.serve.service import DomainGuard

    guards = {}
    for model_id, d in domains.items():
        examples = []
        if d.examples_file:
            for line in Path(d.examples_file).read_text(encoding="utf-8").splitlines():
                line = line.strip()
                if line:
                    examples.append(
                        json.loads(line).get("text", "") if line.startswith("{") else line
                    )
        guards[model_id] = DomainGuard(d.keywords, examples, d.min_similarity, d.refusal)
    return guards


def serve_settings(recipe: Recipe | None, models: list[str], options: dict[str, Any]):
    """The recipe's `serve` section (or the defaults), overridden by the command line's options."""
    from kollm.config import DomainConfig, ServeConfig

    cfg = recipe.serve if recipe is not None else ServeConfig()
    domain_files = options.pop("domain_files", None)
    given = {k: v for k, v in options.items() if v is not None}
    if models:
        given["models"] = models
    cfg = cfg.model_copy(update=given)
    if not cfg.models and recipe is not None:
        alias = recipe.registry.alias
        cfg = cfg.model_copy(
            update={"models": [f"{recipe.model_name}@{alias}" if alias else recipe.model_name]}
        )
    if not cfg.models:
        fail("name the models to serve, or give --recipe")
    domains = dict(cfg.domains)
    for model_id, path in _pairs(domain_files, "--domain").items():
        words = [
            w.strip() for w in Path(path).read_text(encoding="utf-8").splitlines() if w.strip()
        ]
        domains[model_id] = DomainConfig(keywords=words)
    return cfg, domains


@app.command("serve")
def serve(
    models: Annotated[
        list[str] | None, typer.Argument(help="NAME@ALIAS, NAME:VERSION, NAME or a model dir.")
    ] = None,
    recipe: Annotated[
        Path | None, typer.Option(help="Take settings from this recipe's serve section.")
    ] = None,
    engine: Annotated[
        str | None, typer.Option(help="ctranslate2 (default), transformers or vllm.")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on [127.0.0.1].")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on [8000].")] = None,
    api_key: Annotated[
        str | None, typer.Option(help="Require this key (also KOLLM_API_KEY).")
    ] = None,
    api_key_file: Annotated[
        Path | None, typer.Option(help="File with one accepted key a line.")
    ] = None,
    no_log: Annotated[
        bool, typer.Option("--no-log", help="Do not log requests and answers.")
    ] = False,
    max_batch: Annotated[
        int | None, typer.Option(help="Most requests in one engine batch [8].")
    ] = None,
    max_queue: Annotated[
        int | None, typer.Option(help="Most requests waiting per model [64].")
    ] = None,
    timeout: Annotated[float | None, typer.Option(help="Request timeout in seconds [120].")] = None,
    adapter: Annotated[
        list[str] | None, typer.Option(help="LoRA adapter NAME=DIR (transformers).")
    ] = None,
    domain: Annotated[
        list[str] | None,
        typer.Option(help="MODEL=FILE: keywords (one a line) of the model's domain."),
    ] = None,
    alias_poll: Annotated[
        float | None, typer.Option(help="Seconds between alias checks [2].")
    ] = None,
    admin_key: Annotated[
        str | None,
        typer.Option(help="Key of POST /v1/load_lora_adapter and unload (also KOLLM_ADMIN_KEY)."),
    ] = None,
    adapter_root: Annotated[
        Path | None,
        typer.Option(help="Directory that adapters loaded at run time by path must lie under."),
    ] = None,
) -> None:
    """Serve models over an OpenAI-compatible HTTP API."""
    import uvicorn

    from kollm.serve.app import ServeSettings, create_app
    from kollm.serve.log import RequestLog
    from kollm.serve.metrics import ServerMetrics
    from kollm.serve.service import ModelManager

    loaded = _load(recipe, None) if recipe is not None else None
    options = {
        "engine": engine,
        "host": host,
        "port": port,
        "max_batch": max_batch,
        "max_queue": max_queue,
        "request_timeout_s": timeout,
        "alias_poll_s": alias_poll,
        "log_requests": False if no_log else None,
        "adapters": _pairs(adapter, "--adapter") or None,
    }
    with user_errors():
        cfg, domains = serve_settings(loaded, models or [], {**options, "domain_files": domain})
    manager = ModelManager(
        cfg.models,
        cfg.engine,
        ServerMetrics(),
        max_batch=cfg.max_batch,
        max_queue=cfg.max_queue,
        adapters=cfg.adapters,
        guards=_guards(domains),
        adapter_root=adapter_root,
    )
    settings = ServeSettings(
        api_keys=_api_keys(api_key, api_key_file),
        admin_keys=_admin_keys(admin_key),
        request_timeout_s=cfg.request_timeout_s,
        log_requests=cfg.log_requests,
        alias_poll_s=cfg.alias_poll_s,
        load_before_ready=True,  # a model that cannot load stops the server (exit 2)
    )
    try:
        manager.check_refs()
    except ValueError as err:
        fail(f"cannot serve: {err}")
    console.print(
        f"kollm serve: {', '.join(cfg.models)} with {cfg.engine} on http://{cfg.host}:{cfg.port}/v1"
    )
    try:
        uvicorn.run(
            create_app(manager, settings, RequestLog() if cfg.log_requests else None),
            host=cfg.host,
            port=cfg.port,
        )
    except SystemExit:
        if manager.failure:  # uvicorn exits 3 on a failed start-up; the reason is ours
            fail(f"cannot serve: {manager.failure}")
        raise


# --- feedback ----------------------------------------------------------------------------------


@feedback_app.command("add")
def feedback_add(
    response_id: Annotated[str, typer.Argument(help="The id of a logged response (chatcmpl-...).")],
    rating: Annotated[str, typer.Option(help="good, bad, or 1-5.")],
    category: Annotated[
        list[str] | None,
        typer.Option(
            help="hallucination, harmful, biased, evasive, off-domain or other; repeatable."
        ),
    ] = None,
    comment: Annotated[str | None, typer.Option(help="Free text.")] = None,
    correction: Annotated[str | None, typer.Option(help="The answer the user wanted.")] = None,
) -> None:
    """Rate a logged answer (the same as POST /v1/feedback)."""
    from kollm.feedback.store import FeedbackError, FeedbackStore

    try:
        stored = FeedbackStore().add(
            response_id, rating, category or [], comment, correction, "cli"
        )
    except FeedbackError as err:
        fail(str(err))
    console.print(f"feedback {stored['id']} on {stored['model_version']} ({stored['rating']})")


@feedback_app.command("stats")
def feedback_stats_cmd(
    model: Annotated[str | None, typer.Option(help="Only this model.")] = None,
    since: Annotated[
        str | None, typer.Option(help="Only feedback from this date (YYYY-MM-DD) on.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    png: Annotated[Path, typer.Option(help="Where the chart goes.")] = Path(
        "runs/feedback/stats.png"
    ),
) -> None:
    """Counts and rates per category and per model version, as a table and a PNG."""
    from kollm.feedback.stats import feedback_stats, plot_stats
    from kollm.feedback.store import FeedbackStore

    stats = feedback_stats(FeedbackStore().rows(model, since))
    if as_json:
        print(json.dumps(stats, ensure_ascii=False))
        return
    table = Table(title=f"Feedback: {stats['total']} ratings, bad rate {stats['bad_rate']:.1%}")
    for column in ("version", "ratings", "bad", "bad rate", "categories"):
        table.add_column(column)
    for version, g in stats["versions"].items():
        cats = ", ".join(f"{c} {n}" for c, n in g["categories"].items()) or "-"
        table.add_row(version, str(g["total"]), str(g["bad"]), f"{g['bad_rate']:.1%}", cats)
    console.print(table)
    if stats["total"]:
        plot_stats(stats, png)
        console.print(f"chart: {png}")


@feedback_app.command("export")
def feedback_export(
    format: Annotated[str, typer.Option("--format", help="sft, dpo or kto.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output dir.")] = Path(
        "runs/feedback/export"
    ),
    model: Annotated[str | None, typer.Option(help="Only this model.")] = None,
    kind: Annotated[
        str, typer.Option(help="For sft: instruction or dialogue_summary rows.")
    ] = "instruction",
) -> None:
    """Corrections -> SFT rows and DPO pairs; thumbs -> KTO rows (PII-masked, deduplicated)."""
    from kollm.feedback.export import export_feedback
    from kollm.feedback.store import FeedbackStore

    try:
        manifest = export_feedback(FeedbackStore().rows(model), format, output, kind)
    except ValueError as err:
        fail(str(err))
    console.print(
        f"{manifest['rows']} rows -> {output / manifest['file']} (sha256 {manifest['sha256'][:12]})"
    )


# --- loop --------------------------------------------------------------------------------------


@loop_app.command("run", hidden=True)
def loop_run(
    recipe: RecipeArg,
    overrides: OverridesArg = None,
    force: Annotated[bool, typer.Option(help="Retrain even when no trigger rule is met.")] = False,
    every: Annotated[
        float | None, typer.Option(help="Check again every N seconds (a schedule) until Ctrl-C.")
    ] = None,
) -> None:
    """Check the trigger; when it fires: export, retrain, evaluate both, gate, promote or reject."""
    import time

    from kollm.orchestrate.loop import run_loop

    loaded = _load(recipe, overrides)
    while True:
        with user_errors():
            decision = run_loop(loaded, force=force)
        _print_decision(loaded, decision)
        if every is None:
            return
        time.sleep(every)


def _print_decision(loaded: Recipe, decision) -> None:
    console.print(
        f"loop: {decision.decision} ({decision.trigger}); production was {decision.production}"
    )
    if decision.metrics:
        gated = loaded.loop.gate.metrics
        for side in ("production", "candidate"):
            values = ", ".join(f"{m} {decision.metrics[side][m]:.3f}" for m in gated)
            console.print(f"  {side:10s} {values}")
        for failure in decision.metrics["gate_failures"]:
            console.print(f"  gate: {failure}")
    if decision.candidate:
        console.print(f"  promoted {decision.candidate} to {loaded.loop.alias}")


@loop_app.command("history")
def loop_history(
    name: Annotated[str | None, typer.Argument(help="Only this model.")] = None,
) -> None:
    """Every loop decision with the metrics that led to it."""
    from kollm.orchestrate.loop import history

    table = Table(title="Loop decisions")
    for column in (
        "at",
        "model",
        "decision",
        "trigger",
        "production",
        "candidate",
        "score cand/prod",
    ):
        table.add_column(column)
    for row in history(Registry(), name):
        m = row["metrics"]
        scores = f"{m['candidate']['score']:.2f} / {m['production']['score']:.2f}" if m else "-"
        table.add_row(
            row["at"],
            row["model"],
            row["decision"],
            row["trigger"],
            str(row["production_version"] or "-"),
            str(row["candidate_version"] or "-"),
            scores,
        )
    console.print(table)


# --- tune --------------------------------------------------------------------------------------


@app.command("tune")
def tune_cmd(
    recipe: RecipeArg,
    overrides: OverridesArg = None,
    trials: Annotated[
        int | None,
        typer.Option(help="Run this many more trials now (default: up to tune.trials in all)."),
    ] = None,
) -> None:
    """Optuna over the recipe's `tune.space`, maximising the eval metric; resumable."""
    from kollm.orchestrate.tune import tune

    _load(recipe, overrides)
    try:
        result = tune(recipe, trials, overrides)
    except ValueError as err:
        fail(str(err))
    table = Table(
        title=f"Best of {result.trials} trials ({result.pruned} pruned): {result.best_value:.3f}"
    )
    table.add_column("field")
    table.add_column("value")
    for name, value in result.best_params.items():
        table.add_row(name, str(value))
    console.print(table)
    console.print(f"summary: {result.files['summary']}  plot: {result.files['plot']}")


# --- plan --------------------------------------------------------------------------------------

InventoryOpt = Annotated[
    Path | None, typer.Option(help="Inventory YAML of nodes and GPUs (default: this machine).")
]


RayAddressOpt = Annotated[
    str | None, typer.Option(help="Ray dashboard address, e.g. http://HOST:8265.")
]
RayTokenOpt = Annotated[str | None, typer.Option(help="Ray auth token (default: RAY_AUTH_TOKEN).")]


def _inventory(path: Path | None):
    from kollm.orchestrate.inventory import InventoryError, load_inventory

    if path is None:
        return None
    try:
        return load_inventory(path)
    except InventoryError as err:
        fail(str(err))


def _plan_shape(model: str | None, numbers: dict[str, Any]):
    from kollm.orchestrate.planner import ModelShape, PlanInputError

    try:
        if model is None:
            return ModelShape.from_config(numbers, "the numbers given")
        source = Path(model)
        with user_errors():
            if not source.exists():
                source = Path(Registry().get(model).artifact_path)
        return ModelShape.load(source, numbers)
    except PlanInputError as err:
        fail(str(err))


@app.command("plan")
def plan_cmd(
    model: Annotated[
        str | None,
        typer.Argument(help="A model dir, a config.json, or a registry reference."),
    ] = None,
    task: Annotated[str, typer.Option(help="inference, full, lora or qlora.")] = "inference",
    precision: Annotated[str, typer.Option(help="fp32, bf16, fp16, int8, int4 or nf4.")] = "bf16",
    context: Annotated[int, typer.Option(help="Context length in tokens.")] = 8192,
    concurrency: Annotated[int, typer.Option(help="Sequences held at once.")] = 1,
    lora_rank: Annotated[int, typer.Option(help="LoRA rank (lora, qlora).")] = 16,
    batch: Annotated[int, typer.Option(help="Training: sequences per step.")] = 1,
    checkpointing: Annotated[
        bool, typer.Option(help="Training: gradient checkpointing (TRL's default).")
    ] = True,
    attention: Annotated[
        str, typer.Option(help="Training: sdpa, flash or eager (keeps the score matrices).")
    ] = "sdpa",
    gpu: Annotated[
        str | None, typer.Option(help="Card for the KV budget (see the catalogue).")
    ] = None,
    gpu_memory_utilization: Annotated[float, typer.Option(help="vLLM's share of the card.")] = 0.9,
    activation_gib: Annotated[
        float | None, typer.Option(help="Activation peak, if known (GiB).")
    ] = None,
    inventory: InventoryOpt = None,
    params_b: Annotated[float | None, typer.Option(help="Parameters, billions.")] = None,
    layers: Annotated[int | None, typer.Option(help="Decoder layers.")] = None,
    hidden_size: Annotated[int | None, typer.Option(help="Hidden size.")] = None,
    heads: Annotated[int | None, typer.Option(help="Attention heads.")] = None,
    kv_heads: Annotated[int | None, typer.Option(help="KV heads (GQA).")] = None,
    head_dim: Annotated[int | None, typer.Option(help="Head dimension.")] = None,
    vocab_size: Annotated[int | None, typer.Option(help="Vocabulary size.")] = None,
    intermediate_size: Annotated[int | None, typer.Option(help="MLP size.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Memory a model needs for a task, which cards hold it, and its KV budget (vLLM blocks).

    The model is a config (a dir, a config.json, a registry reference), explicit numbers
    (--layers --hidden-size --heads --kv-heads --vocab-size ...), or a config and numbers."""
    from kollm.orchestrate.inventory import placements
    from kollm.orchestrate.planner import ATTENTION, BYTES, CARDS, kv_budget, max_context, plan

    if task not in ("inference", "full", "lora", "qlora") or precision not in BYTES:
        fail("--task is inference, full, lora or qlora; --precision one of " + ", ".join(BYTES))
    if attention not in ATTENTION:
        fail(f"--attention: one of {', '.join(ATTENTION)}, got {attention!r}")
    if gpu is not None and gpu not in CARDS:
        fail(f"--gpu: unknown card {gpu!r}; known: {', '.join(CARDS)}")
    inv = _inventory(inventory)
    numbers = {
        "num_parameters": int(params_b * 1e9) if params_b else None,
        "num_hidden_layers": layers,
        "hidden_size": hidden_size,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "vocab_size": vocab_size,
        "intermediate_size": intermediate_size,
    }
    shape = _plan_shape(model, {k: v for k, v in numbers.items() if v is not None})
    result = plan(
        shape,
        task,
        precision,
        context,
        concurrency,
        lora_rank,
        gpu_memory_utilization,
        activation_gib,
        cards=inv.cards() if inv is not None else None,
        checkpointing=checkpointing,
        attention=attention,
        batch=batch,
    )
    cards = {**CARDS, **(inv.cards() if inv is not None else {})}
    card = gpu or next(iter(result.fits or []), None)
    if card is not None and task == "inference":
        result = kv_budget(result, cards[card], gpu_memory_utilization, context)
    longest = None
    if card is not None and task != "inference":
        options = {"checkpointing": checkpointing, "attention": attention, "batch": batch}
        longest = max_context(shape, task, cards[card], lora_rank, **options)
    rows = placements(result.total_gib, inv, gpu_memory_utilization) if inv is not None else None
    if as_json:
        out = {**result.as_dict(), "card": card, "inventory": rows, "max_context": longest}
        print(json.dumps(out))
        return
    table = Table(
        title=f"{model or f'{shape.parameters / 1e9:.1f}B'}: {task} at {precision}, "
        f"context {context}, concurrency {concurrency}"
    )
    table.add_column("")
    table.add_column("GiB", justify="right")
    for label, value in (
        ("weights", result.weights_gib),
        ("activations (peak)", result.activation_gib),
        ("gradients + optimizer / adapters", result.training_gib),
        (
            "KV cache for the context x concurrency"
            if task == "inference"
            else "CUDA context and workspace",
            result.total_gib - result.weights_gib - result.activation_gib - result.training_gib,
        ),
        ("total", result.total_gib),
        ("rule of thumb: 2 GB per billion (FP16)", result.rule_of_thumb_gib),
    ):
        table.add_row(label, f"{value:.2f}")
    console.print(table)
    console.print(f"assumes: {result.assumes}")
    console.print(f"fits alone on: {', '.join(result.fits) or 'none'}")
    if longest is not None:
        console.print(f"on {card}: the longest sequence that trains is {longest} tokens")
    for row in rows or []:
        holds = "holds it" if row["holds"] else "too few"
        console.print(
            f"{row['node']}: needs {row['needed']} of its {row['count']} {row['card']} ({holds})"
        )
    if result.kv_cache_gib is not None:
        console.print(
            f"on {card}: KV cache {result.kv_cache_gib:.2f} GiB, {result.kv_blocks} blocks of 16 "
            f"tokens, max concurrency {result.max_concurrency:.1f} at {context} tokens"
        )


# --- jobs --------------------------------------------------------------------------------------

jobs_app = typer.Typer(
    help="Jobs: recipe stages run in the background, on this machine or on a Ray cluster.",
    no_args_is_help=True,
)
app.add_typer(jobs_app, name="jobs")


def _job_executor(job_id: int | None = None, **options: Any):
    """The executor of an existing job (the one its row names), or of a new one."""
    from kollm.orchestrate.jobs import JobError, LocalExecutor
    from kollm.orchestrate.ray_jobs import RayExecutor

    local = LocalExecutor(
        max_running=options.get("max_running", 2), inventory=options.get("inventory")
    )
    try:
        row = local.get(job_id) if job_id is not None else None
    except JobError as err:
        fail(str(err))
    address = row["address"] if row is not None else options.get("address")
    if (row is not None and row["executor"] == "ray") or options.get("executor") == "ray":
        if not address:
            fail("--executor ray needs --address http://HOST:8265 (the Ray dashboard)")
        keep = ("token", "python", "working_dir", "inventory")
        return RayExecutor(address, **{k: v for k, v in options.items() if k in keep})
    return local


@jobs_app.command("submit")
def jobs_submit(
    stage: Annotated[str, typer.Argument(help="train, eval, tune, loop, run or data.")],
    recipe: RecipeArg,
    overrides: OverridesArg = None,
    cpus: Annotated[float, typer.Option(help="CPUs the job needs.")] = 1,
    gpus: Annotated[int, typer.Option(help="GPUs the job needs.")] = 0,
    memory_gib: Annotated[float, typer.Option(help="Memory the job needs (GiB).")] = 0.0,
    executor: Annotated[str, typer.Option(help="local (this machine) or ray.")] = "local",
    address: RayAddressOpt = None,
    token: RayTokenOpt = None,
    python: Annotated[str, typer.Option(help="The Python the Ray job runs.")] = "python",
    working_dir: Annotated[
        str | None, typer.Option(help="A directory Ray uploads for the job.")
    ] = None,
    inventory: InventoryOpt = None,
    max_running: Annotated[int, typer.Option(help="Jobs running at once on this machine.")] = 2,
) -> None:
    """Start a recipe stage in the background; it outlives this command."""
    from kollm.orchestrate.jobspec import JobError, JobSpec

    if executor not in ("local", "ray"):
        fail(f"--executor: expected local or ray, got {executor!r}")
    _load(recipe, overrides)
    options = {"executor": executor, "address": address, "token": token, "python": python}
    options.update(working_dir=working_dir, inventory=_inventory(inventory))
    try:
        spec = JobSpec(stage, str(recipe), overrides or [], cpus, gpus, memory_gib)
        job_id = _job_executor(max_running=max_running, **options).submit(spec)
    except JobError as err:
        fail(str(err))
    console.print(f"job {job_id} submitted; follow it with: kollm jobs logs {job_id} --follow")


@jobs_app.command("list")
def jobs_list() -> None:
    """Every job with its status."""
    table = Table(title="Jobs")
    for column in ("id", "stage", "executor", "status", "submitted", "exit", "command"):
        table.add_column(column)
    for job in _job_executor().list():
        job = _refreshed(job)
        table.add_row(
            str(job["id"]),
            job["stage"],
            job["executor"] + (f" {job['address']}" if job["address"] else ""),
            job["status"],
            job["submitted_at"],
            str(job["exit_code"] if job["exit_code"] is not None else "-"),
            " ".join(job["command"][job["command"].index("kollm") + 1 :]),
        )
    console.print(table)


def _refreshed(job: dict[str, Any]) -> dict[str, Any]:
    """A Ray job's row with its status asked of Ray; as stored when the cluster cannot answer."""
    from kollm.orchestrate.jobs import ACTIVE
    from kollm.orchestrate.jobspec import JobError
    from kollm.orchestrate.ray_jobs import RayExecutor

    if job["executor"] != "ray" or job["status"] not in ACTIVE:
        return job
    try:
        return RayExecutor(job["address"]).get(job["id"])
    except JobError:
        return job


def _on_job(job_id: int, action: Callable[[Any], Any]) -> Any:
    from kollm.orchestrate.jobspec import JobError

    try:
        return action(_job_executor(job_id))
    except JobError as err:
        fail(str(err))


@jobs_app.command("status")
def jobs_status(job_id: Annotated[int, typer.Argument(help="Job id.")]) -> None:
    """One job as JSON (its status asked of Ray for a Ray job)."""
    console.print_json(json.dumps(_on_job(job_id, lambda ex: ex.get(job_id))))


@jobs_app.command("logs")
def jobs_logs(
    job_id: Annotated[int, typer.Argument(help="Job id.")],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Stream until the job ends.")
    ] = False,
) -> None:
    """The job's output so far, or all of it as it comes with --follow."""
    if not follow:
        print(_on_job(job_id, lambda ex: ex.logs(job_id)), end="")
        return

    def stream(executor: Any) -> None:
        for chunk in executor.follow(job_id):
            print(chunk, end="", flush=True)

    _on_job(job_id, stream)


@jobs_app.command("stop")
def jobs_stop(job_id: Annotated[int, typer.Argument(help="Job id.")]) -> None:
    """End a job and its child processes."""
    job = _on_job(job_id, lambda ex: ex.stop(job_id))
    console.print(f"job {job_id}: {job['status']}")


# --- batch and deploy ----------------------------------------------------------------------------


@app.command("batch")
def batch(
    ref: Annotated[str, typer.Argument(help="NAME@ALIAS, NAME:VERSION, NAME or a model dir.")],
    input: Annotated[Path, typer.Option(help="JSONL of requests: prompt or messages a line.")],
    output: Annotated[Path, typer.Option(help="JSONL of answers (written whole at the end).")],
    engine: Annotated[str, typer.Option(help="ctranslate2, transformers or vllm.")] = "ctranslate2",
    max_tokens: Annotated[int, typer.Option(help="Most tokens per answer.")] = 128,
    batch_size: Annotated[int, typer.Option(help="Requests per engine call.")] = 8,
) -> None:
    """Generate an answer for every request in a file (the batch tier: no server)."""
    from rich.progress import Progress

    from kollm.engines.base import GenerationParams
    from kollm.orchestrate.batch import BatchInputError, generate_file

    params = GenerationParams(max_new_tokens=max_tokens)
    with Progress(console=console) as progress, user_errors():
        task = progress.add_task("generating", total=None)
        try:
            count = generate_file(
                ref,
                input,
                output,
                engine,
                params,
                batch_size,
                progress=lambda done, total: progress.update(task, completed=done, total=total),
            )
        except (BatchInputError, ValueError) as err:
            fail(str(err))
    console.print(f"batch: {count} answers from {ref} -> {output}")


def _deploy_recipe(recipe: Path | None, overrides: list[str] | None) -> Recipe:
    from kollm.config import apply_overrides, format_validation_error, parse_overrides

    if recipe is not None:
        return _load(recipe, overrides)
    try:
        raw = apply_overrides({}, parse_overrides(overrides or []))
        return Recipe.model_validate(raw)
    except RecipeError as err:
        fail(str(err))
    except ValidationError as err:
        fail(format_validation_error("overrides", err, Recipe))
    raise AssertionError  # fail() exits


@app.command("deploy")
def deploy(
    ref: Annotated[str, typer.Argument(help="NAME@ALIAS, NAME:VERSION or NAME in the registry.")],
    overrides: OverridesArg = None,
    recipe: Annotated[
        Path | None, typer.Option(help="Take the deploy and serve sections from this recipe.")
    ] = None,
    address: RayAddressOpt = None,
    token: RayTokenOpt = None,
    python: Annotated[str, typer.Option(help="The Python a batch job runs.")] = "python",
    wait_s: Annotated[float, typer.Option(help="Seconds to wait for RUNNING (0: no wait).")] = 300,
    probe: Annotated[
        bool, typer.Option(help="Send one request and report its time (a cold start if none ran).")
    ] = False,
    delete: Annotated[bool, typer.Option("--delete", help="Remove the application.")] = False,
) -> None:
    """Deploy a model on Ray Serve (always-on, scale-to-zero) or run it over a file (batch).

    Settings come from the recipe's `deploy` section and overrides such as
    deploy.tier=scale-to-zero deploy.max_replicas=4."""
    from kollm.orchestrate.deploy import DeployError, ServeClient, deploy_to_ray

    cfg = _deploy_recipe(recipe, overrides)
    d = cfg.deploy
    with user_errors():
        version = Registry().get(ref)
    if d.tier == "batch":
        _deploy_batch(ref, cfg, address, token, python)
        return
    if d.target == "local":
        fail(f"tier {d.tier} on this machine is `kollm serve {ref}`; deploy.target=ray scales out")
    if not address:
        fail("--address http://HOST:8265 (the Ray dashboard) is needed for deploy.target ray")
    client = ServeClient(address, token)
    name = d.app_name or version.name
    try:
        if delete:
            client.delete(name)
            console.print(f"deploy: application {name} removed from {address}")
            return
        url = deploy_to_ray(version, ref, d, cfg.serve, str(Registry().home), client, wait_s)
    except DeployError as err:
        fail(str(err))
    low, high = d.replicas_min, d.max_replicas
    console.print(f"deploy: {version.ref} as {name} ({d.tier}, {low}-{high} replicas) at {url}")
    if probe:
        _probe(url, name)


def _probe(url: str, model: str) -> None:
    import time

    import httpx

    body = {"model": model, "messages": [{"role": "user", "content": "안녕하세요"}]}
    started = time.perf_counter()
    response = httpx.post(f"{url}/chat/completions", json={**body, "max_tokens": 8}, timeout=600)
    took = time.perf_counter() - started
    if response.status_code != 200:
        fail(f"probe: HTTP {response.status_code}: {response.text[:300]}")
    start = response.headers.get("x-kollm-replica-start-s", "?")
    console.print(f"probe: answered in {took:.2f} s (the replica took {start} s to start)")


def _deploy_batch(ref: str, cfg: Recipe, address: str | None, token: str | None, python: str):
    from kollm.orchestrate.jobspec import JobError, JobSpec

    d = cfg.deploy
    args = [ref, "--input", str(Path(d.input).resolve()), "--output", str(Path(d.output).resolve())]
    args += ["--engine", cfg.serve.engine, "--batch-size", str(cfg.serve.max_batch)]
    spec = JobSpec("batch", "", cpus=d.replica_cpus, gpus=int(d.replica_gpus), args=args)
    executor = "ray" if d.target == "ray" else "local"
    try:
        job_id = _job_executor(
            executor=executor, address=address, token=token, python=python
        ).submit(spec)
    except JobError as err:
        fail(str(err))
    console.print(f"deploy: batch job {job_id} ({executor}); see: kollm jobs logs {job_id} -f")
