"""EDA report of a prepared dataset: length histograms (PNG), topics, speakers, step table.

Written as report.md and report.html beside the PNGs. Plot labels are English: a fresh machine
has no Korean font, and boxes instead of Hangul help nobody.
"""

from __future__ import annotations

import html
import re
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from kollm.data.io import atomic_path, write_text
from kollm.data.records import KINDS, Record, field_texts
from kollm.text.morphemes import TOKENIZERS, get_tokenizer

_SPEAKER_RE = re.compile(r"#Person\d+#")


def _histogram(values: list[int], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.hist(values, bins=40, color="#3b6ea5")
    ax.set_title(title)
    ax.set_ylabel("records")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def _summary(values: list[int]) -> dict[str, float]:
    if not values:
        return {"min": 0, "median": 0, "mean": 0, "max": 0}
    return {
        "min": min(values),
        "median": statistics.median(values),
        "mean": round(statistics.fmean(values), 1),
        "max": max(values),
    }


def _chars_per_token(records: list[Record], fields: tuple[str, ...], tokenizer: str) -> float:
    if tokenizer in TOKENIZERS:
        tokenize = get_tokenizer(tokenizer).tokenize
    else:
        from tokenizers import Tokenizer

        path = Path(tokenizer)
        tok = Tokenizer.from_file(str(path / "tokenizer.json" if path.is_dir() else path))
        tokenize = lambda text: tok.encode(text).tokens  # noqa: E731
    sample = [t for r in records[:500] for f in fields for t in field_texts(r, f)]
    chars = sum(len(t) for t in sample)
    tokens = sum(len(tokenize(t)) for t in sample)
    return round(chars / tokens, 2) if tokens else 0.0


def build_report(
    splits: dict[str, list[Record]],
    kind_name: str,
    out_dir: Path,
    tokenizer: str | None = None,
    top_topics: int = 15,
) -> dict[str, Any]:
    """Compute the EDA figures and write the PNGs; returns what the pages show."""
    kind = KINDS[kind_name]
    records = [r for rows in splits.values() for r in rows]
    report: dict[str, Any] = {"splits": {k: len(v) for k, v in splits.items()}, "fields": {}}
    for name in kind.text_fields:
        lengths = [len(t) for r in records for t in field_texts(r, name)]
        if not lengths:
            continue
        png = out_dir / f"length_{name}.png"
        _histogram(lengths, f"{name} length (characters)", png)
        report["fields"][name] = {**_summary(lengths), "histogram": png.name}
    topics = Counter(r["topic"] for r in records if r.get("topic"))
    report["topics"] = topics.most_common(top_topics)
    if kind_name == "dialogue_summary":
        speakers = [len(set(_SPEAKER_RE.findall(r["dialogue"]))) for r in records]
        turns = [r["dialogue"].count("\n") + 1 for r in records]
        report["speakers_per_dialogue"] = dict(sorted(Counter(speakers).items()))
        report["turns"] = _summary(turns)
        _histogram(turns, "turns per dialogue", out_dir / "turns.png")
    if tokenizer:
        report["chars_per_token"] = {
            "tokenizer": tokenizer,
            "value": _chars_per_token(records, kind.text_fields, tokenizer),
        }
    return report


def _step_rows(stats: dict[str, Any]) -> list[list[str]]:
    rows = []
    for s in stats["steps"]:
        detail = ", ".join(f"{k} {v}" for k, v in {**s["reasons"], **s["changes"]}.items())
        rows.append([s["step"], str(s["seen"]), str(s["kept"]), str(s["dropped"]), detail or "-"])
    return rows


def _sections(
    report: dict[str, Any], stats: dict[str, Any]
) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) tables shared by the Markdown and HTML pages."""
    sections = [
        ("Splits", ["split", "records"], [[k, str(v)] for k, v in report["splits"].items()]),
        ("Steps", ["step", "seen", "kept", "dropped", "reasons / changes"], _step_rows(stats)),
        (
            "Lengths (characters)",
            ["field", "min", "median", "mean", "max"],
            [
                [f, *(str(v[k]) for k in ("min", "median", "mean", "max"))]
                for f, v in report["fields"].items()
            ],
        ),
    ]
    if report["topics"]:
        sections.append(
            ("Top topics", ["topic", "records"], [[t, str(n)] for t, n in report["topics"]])
        )
    if "speakers_per_dialogue" in report:
        rows = [[str(k), str(v)] for k, v in report["speakers_per_dialogue"].items()]
        sections.append(("Speakers per dialogue", ["speakers", "dialogues"], rows))
    if "chars_per_token" in report:
        cpt = report["chars_per_token"]
        sections.append(
            (
                "Characters per token",
                ["tokenizer", "chars/token"],
                [[cpt["tokenizer"], str(cpt["value"])]],
            )
        )
    return sections


def _images(report: dict[str, Any]) -> list[str]:
    images = [v["histogram"] for v in report["fields"].values()]
    return images + (["turns.png"] if "turns" in report else [])


def render_markdown(report: dict[str, Any], stats: dict[str, Any]) -> str:
    """The EDA report as Markdown."""
    lines = ["# Data report", ""]
    for title, header, rows in _sections(report, stats):
        lines += [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows] + [""]
    lines += ["## Histograms", ""] + [f"![{img}]({img})" for img in _images(report)]
    return "\n".join(lines) + "\n"


def render_html(report: dict[str, Any], stats: dict[str, Any]) -> str:
    """The EDA report as one HTML page."""
    parts = [
        "<!doctype html><meta charset='utf-8'><title>kollm data report</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .6em}</style>",
        "<h1>Data report</h1>",
    ]
    for title, header, rows in _sections(report, stats):
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
        )
        parts.append(f"<h2>{html.escape(title)}</h2><table><tr>{head}</tr>{body}</table>")
    parts += [f"<p><img src='{img}' alt='{img}'></p>" for img in _images(report)]
    return "\n".join(parts) + "\n"


def write_report(report: dict[str, Any], stats: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write the report's JSON, Markdown, HTML and histograms."""
    paths = {"markdown": out_dir / "report.md", "html": out_dir / "report.html"}
    write_text(paths["markdown"], render_markdown(report, stats))
    write_text(paths["html"], render_html(report, stats))
    return paths
