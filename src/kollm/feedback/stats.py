"""Feedback statistics: counts and rates per category, per model version, and per day."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from kollm.data.io import atomic_path
from kollm.feedback.store import CATEGORIES


def _rate(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


def feedback_stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts and bad rates per category, model version and day."""
    total = len(rows)
    bad = sum(1 for r in rows if not r["is_good"])
    categories = Counter(c for r in rows for c in r["categories"])
    versions: dict[str, list[dict[str, Any]]] = defaultdict(list)
    days: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        versions[row["model_version"]].append(row)
        days[row["created_at"][:10]].append(row)
    return {
        "total": total,
        "good": total - bad,
        "bad": bad,
        "bad_rate": _rate(bad, total),
        "corrections": sum(1 for r in rows if r["correction"]),
        "categories": {
            c: {"count": categories[c], "rate": _rate(categories[c], total)} for c in CATEGORIES
        },
        "versions": {v: _group(rs) for v, rs in sorted(versions.items())},
        "days": {d: _group(rs) for d, rs in sorted(days.items())},
    }


def _group(rows: list[dict[str, Any]]) -> dict[str, Any]:
    bad = sum(1 for r in rows if not r["is_good"])
    counts = Counter(c for r in rows for c in r["categories"])
    return {
        "total": len(rows),
        "bad": bad,
        "bad_rate": _rate(bad, len(rows)),
        "categories": dict(counts),
    }


def plot_stats(stats: dict[str, Any], path: Path) -> None:
    """Bad-answer rate per model version and counts per category, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    versions = list(stats["versions"])
    left.bar(versions, [stats["versions"][v]["bad_rate"] for v in versions], color="#c0504d")
    left.set_title("bad-answer rate per version")
    left.set_ylim(0, 1)
    left.tick_params(axis="x", rotation=30)
    names = list(stats["categories"])
    right.barh(names, [stats["categories"][c]["count"] for c in names], color="#3b6ea5")
    right.set_title("feedback per category")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
