"""The eval report: model against the lead baseline, and the examples the model did worst on."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from kollm.data.io import write_text

COLUMNS = ("rouge1", "rouge2", "rougeL", "score")


def score_rows(metrics: dict[str, Any]) -> list[list[str]]:
    """Rows of the metrics table: model and baseline."""
    rows = []
    for label, key in (("model", "model"), ("lead baseline", "baseline_lead")):
        if key in metrics:
            m = metrics[key]
            rows.append(
                [label, *(f"{m[c]:.4f}" if c != "score" else f"{m[c]:.2f}" for c in COLUMNS)]
            )
    return rows


def worst(
    rows: list[dict[str, Any]], prompts: list[str], n: int
) -> list[tuple[dict[str, Any], str]]:
    """The examples with the lowest ROUGE-L."""
    order = sorted(range(len(rows)), key=lambda i: rows[i]["rougeL"])
    return [(rows[i], prompts[i]) for i in order[:n]]


def render_markdown(metrics: dict[str, Any], rows, prompts, n_worst: int) -> str:
    """The eval report as Markdown."""
    lines = [
        "# Eval report",
        "",
        f"{metrics['examples']} examples; model: `{metrics['model_dir']}`",
        "",
    ]
    lines += ["| | ROUGE-1 | ROUGE-2 | ROUGE-L | score |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in score_rows(metrics)]
    if "perplexity" in metrics:
        lines += ["", f"Perplexity of the references: {metrics['perplexity']:.2f}"]
    for source, ppl in metrics.get("perplexity_by_source", {}).items():
        lines.append(f"- {source}: {ppl:.2f}")
    lines += ["", f"## The {n_worst} worst examples (ROUGE-L)", ""]
    for row, prompt in worst(rows, prompts, n_worst):
        lines += [
            f"### {row['id']} (ROUGE-L {row['rougeL']:.3f})",
            "",
            "```",
            prompt.strip()[:800],
            "```",
            f"- prediction: {row['prediction']}",
            f"- reference: {row['references'][0]}",
            "",
        ]
    return "\n".join(lines) + "\n"


def render_html(metrics: dict[str, Any], rows, prompts, n_worst: int) -> str:
    """The eval report as one HTML page."""
    head = "".join(f"<th>{h}</th>" for h in ("", "ROUGE-1", "ROUGE-2", "ROUGE-L", "score"))
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
        for r in score_rows(metrics)
    )
    parts = [
        "<!doctype html><meta charset='utf-8'><title>kollm eval report</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .6em}</style>",
        f"<h1>Eval report</h1><p>{metrics['examples']} examples</p>",
        f"<table><tr>{head}</tr>{body}</table>",
        f"<h2>The {n_worst} worst examples</h2>",
    ]
    for row, prompt in worst(rows, prompts, n_worst):
        parts.append(
            f"<h3>{html.escape(str(row['id']))} (ROUGE-L {row['rougeL']:.3f})</h3>"
            f"<pre>{html.escape(prompt.strip()[:800])}</pre>"
            f"<p><b>prediction</b>: {html.escape(row['prediction'])}"
            f"<br><b>reference</b>: {html.escape(row['references'][0])}</p>"
        )
    return "\n".join(parts) + "\n"


def write_eval_report(metrics, rows, prompts, out_dir: Path, n_worst: int) -> dict[str, Path]:
    """Write report.md and report.html beside metrics.json."""
    paths = {"report_md": out_dir / "report.md", "report_html": out_dir / "report.html"}
    write_text(paths["report_md"], render_markdown(metrics, rows, prompts, n_worst))
    write_text(paths["report_html"], render_html(metrics, rows, prompts, n_worst))
    return paths
