"""EDA report of a prepared dataset: length histograms (PNG), topics, speakers, step table.

Written as report.md and report.html beside the PNGs. Plot labels are English: a fresh machine
has no Korean font, and boxes instead of Hangul help nobody.
"""

from __future__ import annotations

import html
import re
from collections import Counter
from pathlib import Path
from typing import Any

from kollm.data.io import atomic_path, write_text
from kollm.data.records import KINDS, Record, field_texts
from kollm.text.morphemes import TOKENIZERS, get_tokenizer

_SPEAKER_RE = re.compile(r"#Person\d+#")


def _histogram(counts: Counter, title: str, path: Path) -> None:
    """A histogram of the values `counts` holds (value -> how many): the bars plt.hist draws
    over the values one by one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = sorted(counts)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.hist(values, bins=40, weights=[counts[v] for v in values], color="#3b6ea5")
    ax.set_title(title)
    ax.set_ylabel("records")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def _summary(counts: Counter) -> dict[str, float]:
    """min, median, mean, max of the values `counts` holds, as statistics gives them for the
    values one by one."""
    n = sum(counts.values())
    if not n:
        return {"min": 0, "median": 0, "mean": 0, "max": 0}
    values = sorted(counts)
    return {
        "min": values[0],
        "median": _median(values, counts, n),
        "mean": round(sum(v * counts[v] for v in values) / n, 1),
        "max": values[-1],
    }


def _median(values: list[int], counts: Counter, n: int) -> float:
    def nth(i: int) -> int:  # the i-th value (from 0) in sorted order
        seen = 0
        for v in values:
            seen += counts[v]
            if seen > i:
                return v
        raise IndexError(i)

    return nth(n // 2) if n % 2 else (nth(n // 2 - 1) + nth(n // 2)) / 2


def _chars_per_token(records: list[Record], fields: tuple[str, ...], tokenizer: str) -> float:
    if tokenizer in TOKENIZERS:
        tokenize = get_tokenizer(tokenizer).tokenize
    else:
        from tokenizers import Tokenizer

        path = Path(tokenizer)
        tok = Tokenizer.from_file(str(path / "tokenizer.json" if path.is_dir() else path))
        tokenize = lambda text: tok.encode(text).tokens  # noqa: E731
    sample = [t for r in records[:SAMPLE] for f in fields for t in field_texts(r, f)]
    chars = sum(len(t) for t in sample)
    tokens = sum(len(tokenize(t)) for t in sample)
    return round(chars / tokens, 2) if tokens else 0.0


SAMPLE = 500  # the first records, in output order, that characters per token is measured on


class ReportCounts:
    """What the report counts, record by record, in forms that add up: each Ray block counts
    its own records and the driver merges the counts, with the numbers of the local run.
    `position` orders records as the output does (topics with equal counts are listed in the
    order they first appear)."""

    def __init__(self, kind_name: str) -> None:
        self.kind_name = kind_name
        self.lengths: dict[str, Counter] = {f: Counter() for f in KINDS[kind_name].text_fields}
        self.topics: Counter = Counter()
        self.first: dict[str, Any] = {}  # topic -> position of its first record
        self.speakers: Counter = Counter()
        self.turns: Counter = Counter()

    def add(self, record: Record, position: Any) -> None:
        for name, counts in self.lengths.items():
            counts.update(len(t) for t in field_texts(record, name))
        topic = record.get("topic")
        if topic:
            self.topics[topic] += 1
            self.first[topic] = min(self.first.get(topic, position), position)
        if self.kind_name == "dialogue_summary":
            self.speakers[len(set(_SPEAKER_RE.findall(record["dialogue"])))] += 1
            self.turns[record["dialogue"].count("\n") + 1] += 1

    def merge(self, other: ReportCounts) -> None:
        for name, counts in other.lengths.items():
            self.lengths[name].update(counts)
        self.topics.update(other.topics)
        for topic, position in other.first.items():
            self.first[topic] = min(self.first.get(topic, position), position)
        self.speakers.update(other.speakers)
        self.turns.update(other.turns)

    def to_json(self) -> dict[str, Any]:
        """Counters as [value, count] pairs: JSON would turn integer keys into strings."""
        pairs = lambda c: sorted(c.items())  # noqa: E731
        return {
            "lengths": {f: pairs(c) for f, c in self.lengths.items()},
            "topics": [[t, n, self.first[t]] for t, n in self.topics.items()],
            "speakers": pairs(self.speakers),
            "turns": pairs(self.turns),
        }

    @classmethod
    def from_json(cls, kind_name: str, data: dict[str, Any]) -> ReportCounts:
        counts = cls(kind_name)
        for name, pairs in data["lengths"].items():
            counts.lengths[name] = Counter(dict(pairs))
        for topic, n, first in data["topics"]:
            counts.topics[topic], counts.first[topic] = n, first
        counts.speakers, counts.turns = (
            Counter(dict(data["speakers"])),
            Counter(dict(data["turns"])),
        )
        return counts

    def top_topics(self, n: int) -> list[tuple[str, int]]:
        """Counter.most_common's order: by count, ties by first appearance."""
        ranked = sorted(self.topics, key=lambda t: (-self.topics[t], self.first[t]))
        return [(t, self.topics[t]) for t in ranked[:n]]


def build_report(
    splits: dict[str, list[Record]],
    kind_name: str,
    out_dir: Path,
    tokenizer: str | None = None,
    top_topics: int = 15,
) -> dict[str, Any]:
    """Compute the EDA figures and write the PNGs; returns what the pages show."""
    counts = ReportCounts(kind_name)
    records = [r for rows in splits.values() for r in rows]
    for position, record in enumerate(records):
        counts.add(record, position)
    sizes = {k: len(v) for k, v in splits.items()}
    return report_from_counts(counts, sizes, out_dir, tokenizer, top_topics, records[:SAMPLE])


def report_from_counts(
    counts: ReportCounts,
    splits: dict[str, int],
    out_dir: Path,
    tokenizer: str | None,
    top_topics: int,
    sample: list[Record],
) -> dict[str, Any]:
    """The report of these counts (the PNGs written); `sample`: the first records in output
    order, for characters per token."""
    report: dict[str, Any] = {"splits": dict(splits), "fields": {}}
    for name, lengths in counts.lengths.items():
        if not lengths:
            continue
        png = out_dir / f"length_{name}.png"
        _histogram(lengths, f"{name} length (characters)", png)
        report["fields"][name] = {**_summary(lengths), "histogram": png.name}
    report["topics"] = counts.top_topics(top_topics)
    if counts.kind_name == "dialogue_summary":
        report["speakers_per_dialogue"] = dict(sorted(counts.speakers.items()))
        report["turns"] = _summary(counts.turns)
        _histogram(counts.turns, "turns per dialogue", out_dir / "turns.png")
    if tokenizer:
        fields = KINDS[counts.kind_name].text_fields
        value = _chars_per_token(sample, fields, tokenizer)
        report["chars_per_token"] = {"tokenizer": tokenizer, "value": value}
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
