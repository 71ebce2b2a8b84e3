"""`kollm judge grade|pair|agree`: LLM-as-judge through any OpenAI-compatible endpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from kollm.cli.common import app, console, fail

judge_app = typer.Typer(
    help="LLM-as-judge: grade answers, compare two models, check agreement with people.",
    no_args_is_help=True,
)
app.add_typer(judge_app, name="judge")

UrlOpt = Annotated[
    str, typer.Option("--url", help="The judge's base URL (…/v1); key: $KOLLM_JUDGE_API_KEY.")
]
ModelOpt = Annotated[str, typer.Option("--model", help="The judge model's id at that URL.")]
RunsOpt = Annotated[int, typer.Option(help="Judge each row this many times (median).")]
TempOpt = Annotated[float, typer.Option(help="The judge's temperature (use > 0 with --runs).")]
ConcOpt = Annotated[int, typer.Option(help="Judge calls in flight at once.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")]
OutOpt = Annotated[Path | None, typer.Option("--out", help="Write the full results here.")]


def _client(url: str, model: str, temperature: float, concurrency: int):
    from kollm.eval.judge import JudgeCache, JudgeClient, JudgeEndpoint

    return JudgeClient(
        JudgeEndpoint(url, model, temperature=temperature), JudgeCache(), concurrency
    )


def _rows(path: Path, required: tuple[str, ...]) -> list[dict[str, Any]]:
    from kollm.data.io import DataError, iter_jsonl

    rows = []
    try:
        for number, row in iter_jsonl(path):
            missing = [k for k in required if not isinstance(row.get(k), str)]
            if not isinstance(row, dict) or missing:
                fail(f"{path}:{number}: needs string fields {', '.join(required)}")
            rows.append({"id": row.get("id", f"line{number}"), **row})
    except (DataError, FileNotFoundError) as err:
        fail(str(err))
    if not rows:
        fail(f"{path}: no rows")
    return rows


def _finish(summary, as_json: bool, out: Path | None, table: Table, calls: int, hits: int):
    from kollm.data.io import write_json

    data = summary.as_dict()
    if out is not None:
        write_json(out, data)
    if as_json:
        print(json.dumps({k: v for k, v in data.items() if k not in ("grades", "verdicts")}))
        return
    console.print(table)
    console.print(f"judge calls: {calls} made, {hits} from the cache" + (f"; {out}" if out else ""))


def _judge_errors(fn):
    from kollm.eval.judge import JudgeError

    try:
        return fn()
    except JudgeError as err:
        fail(str(err))


@judge_app.command("grade")
def judge_grade(
    file: Annotated[Path, typer.Argument(help="JSONL: question, answer [, reference, category].")],
    url: UrlOpt,
    model: ModelOpt,
    runs: RunsOpt = 1,
    temperature: TempOpt = 0.0,
    concurrency: ConcOpt = 4,
    as_json: JsonOpt = False,
    out: OutOpt = None,
) -> None:
    """Score each answer 1-10 against a Korean rubric (median of --runs)."""
    from kollm.eval.judge import grade, summarise_grades

    rows = _rows(file, ("question", "answer"))
    client = _client(url, model, temperature, concurrency)
    summary = summarise_grades(_judge_errors(lambda: grade(client, rows, runs)))
    table = Table(title=f"judge {model}: {summary.rows} answers, {runs} run(s) each")
    for column in ("mean score", "unparseable", "mean spread", "length bias (Spearman)"):
        table.add_column(column)
    table.add_row(
        *(
            str(v)
            for v in (
                summary.mean_score,
                summary.unparseable,
                summary.mean_spread,
                summary.length_bias,
            )
        )
    )
    _finish(summary, as_json, out, table, client.calls, client.cache.hits)


@judge_app.command("pair")
def judge_pair(
    file: Annotated[
        Path, typer.Argument(help="JSONL: question, answer_a, answer_b [, reference].")
    ],
    url: UrlOpt,
    model: ModelOpt,
    temperature: TempOpt = 0.0,
    concurrency: ConcOpt = 4,
    as_json: JsonOpt = False,
    out: OutOpt = None,
) -> None:
    """Which answer is better, judged in both orders (a verdict that flips is a tie)."""
    from kollm.eval.judge import compare, summarise_pairs

    rows = _rows(file, ("question", "answer_a", "answer_b"))
    client = _client(url, model, temperature, concurrency)
    summary = summarise_pairs(_judge_errors(lambda: compare(client, rows)))
    table = Table(title=f"judge {model}: {summary.rows} pairs")
    for column in (
        "A wins",
        "B wins",
        "ties",
        "unparseable",
        "A win rate",
        "flip rate",
        "longer wins",
    ):
        table.add_column(column)
    table.add_row(
        *(
            str(v)
            for v in (
                summary.wins_a,
                summary.wins_b,
                summary.ties,
                summary.unparseable,
                summary.win_rate_a,
                summary.flip_rate,
                summary.longer_wins,
            )
        )
    )
    _finish(summary, as_json, out, table, client.calls, client.cache.hits)


def _feedback_labels(model_name: str | None) -> list[dict[str, Any]]:
    """People's thumbs from the feedback table, with the question and answer they rated."""
    from kollm.feedback.store import FeedbackStore

    rows = []
    for r in FeedbackStore().rows(model_name):
        if r["rating"] not in ("good", "bad") or not r.get("response"):
            continue
        request = json.loads(r["request"] or "{}")
        users = [
            m.get("content", "") for m in request.get("messages", []) if m.get("role") == "user"
        ]
        question = users[-1] if users else request.get("prompt", "")
        if isinstance(question, str) and question:
            rows.append(
                {
                    "id": r["response_id"],
                    "question": question,
                    "answer": r["response"],
                    "label": r["rating"],
                }
            )
    return rows


@judge_app.command("agree")
def judge_agree(
    url: UrlOpt,
    model: ModelOpt,
    labels: Annotated[
        Path | None, typer.Option(help="JSONL: question, answer, label (good|bad).")
    ] = None,
    feedback: Annotated[
        bool, typer.Option(help="Also the ratings people gave in the feedback table.")
    ] = True,
    served_model: Annotated[
        str | None, typer.Option(help="Only feedback on this served model.")
    ] = None,
    threshold: Annotated[float, typer.Option(help="A score at or above it is 'good'.")] = 6.0,
    concurrency: ConcOpt = 4,
    as_json: JsonOpt = False,
) -> None:
    """Cohen's kappa between the judge and people: how far to trust the judge here."""
    from kollm.data.io import write_json
    from kollm.eval.judge import cohen_kappa, grade, judge_label
    from kollm.store import default_home

    rows = _rows(labels, ("question", "answer", "label")) if labels else []
    if feedback:
        rows += _feedback_labels(served_model)
    if not rows:
        fail("no labelled answers: give --labels FILE, or rate answers through POST /v1/feedback")
    client = _client(url, model, 0.0, concurrency)
    grades = _judge_errors(lambda: grade(client, rows))
    pairs = [
        (r["label"], judge_label(g.score, threshold)) for r, g in zip(rows, grades, strict=True)
    ]
    kept = [(h, j) for h, j in pairs if j is not None]
    kappa = cohen_kappa([h for h, _ in kept], [j for _, j in kept])
    agreement = sum(h == j for h, j in kept) / len(kept) if kept else None
    result = {
        "judge": model,
        "url": url,
        "items": len(rows),
        "judged": len(kept),
        "kappa": kappa,
        "agreement": agreement,
        "threshold": threshold,
    }
    path = default_home() / "judge" / "agreement.json"
    history = json.loads(path.read_text()) if path.exists() else []
    write_json(path, [*history, result])
    if as_json:
        print(json.dumps(result))
        return
    console.print(
        f"judge {model} against people on {len(kept)} answers: Cohen's kappa {kappa}, "
        f"raw agreement {agreement if agreement is None else round(agreement, 3)}; "
        f"stored in {path}"
    )


@judge_app.command("safety")
def judge_safety(
    ref: Annotated[str, typer.Argument(help="NAME, NAME:VERSION, NAME@ALIAS or a model dir.")],
    url: UrlOpt,
    model: ModelOpt,
    cases: Annotated[
        Path, typer.Option("--set", help="JSONL: prompt, expected (refuse|comply), category.")
    ] = Path("data/sample/safety_ko.jsonl"),
    concurrency: ConcOpt = 4,
    as_json: JsonOpt = False,
) -> None:
    """Refusal of the requests to decline and over-refusal of the benign look-alikes, each
    answer classified by the judge; recorded on the registry version."""
    from kollm.eval import safety
    from kollm.eval.evaluate import model_format
    from kollm.prompts import resolve_format
    from kollm.registry import Registry, RegistryError

    try:
        loaded = safety.read_safety_set(cases)
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    registry, version = Registry(), None
    model_dir = Path(ref)
    if not model_dir.is_dir():
        try:
            version = registry.checkout(ref)
        except RegistryError as err:
            fail(str(err))
        model_dir = Path(version.artifact_path)
    fmt = model_format(model_dir, resolve_format("instruction"))
    client = _client(url, model, 0.0, concurrency)
    report = _judge_errors(lambda: safety.evaluate_safety(model_dir, fmt, loaded, client))
    if version is not None:
        registry.add_evaluation(version.ref, "safety", {**report.as_dict(), "judge": model})
    if as_json:
        print(json.dumps(report.as_dict()))
        return
    console.print(
        f"{version.ref if version else model_dir}: refused {report.refusal_rate} of the requests "
        f"to decline, over-refused {report.over_refusal_rate} of the benign ones "
        f"({report.cases} cases, {report.unparseable} verdicts unparsed; judge {model})"
    )
