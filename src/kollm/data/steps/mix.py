"""CorpusMixer: the training split drawn from several sources by weight (domain text with
general text, so adapting to one does not forget the other), and the realised mix reported.

Each source's records are shuffled with the seed and taken in turn; a source whose share is
more than it holds is gone through again in a fresh order (repeated, as an upsampled source is
in the field), one smaller than its share contributes only part of its records. Weights share
out records (`examples`) or tokens (whitespace words of the record's text fields)."""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

from kollm.data.records import Record, RecordKind


def record_tokens(record: Record, kind: RecordKind) -> int:
    """Whitespace words of the record's text fields (messages' contents included)."""
    words = 0
    for name in kind.text_fields:
        value = record.get(name)
        if isinstance(value, str):
            words += len(value.split())
        elif isinstance(value, list):
            for item in value:
                text = item.get("content", "") if isinstance(item, dict) else item
                words += len(str(text).split())
    return words


class CorpusMixer:
    name = "corpus_mixer"

    def __init__(self, weights: dict[str, float], kind: RecordKind, by: str, seed: int) -> None:
        total = sum(weights.values())
        self.shares = {name: w / total for name, w in weights.items()}
        self.kind, self.by, self.seed = kind, by, seed

    def _size(self, record: Record) -> int:
        return 1 if self.by == "examples" else max(1, record_tokens(record, self.kind))

    def mix(self, sources: dict[str, list[Record]], size: int | None = None) -> list[Record]:
        """`size` units (default: all the sources hold) drawn by the shares, shuffled."""
        held = {n: sum(self._size(r) for r in rows) for n, rows in sources.items()}
        size = size or sum(held.values())
        mixed: list[Record] = []
        for i, (name, rows) in enumerate(sorted(sources.items())):
            if rows:
                mixed += self._draw(name, rows, self.shares[name] * size, self.seed + i)
        random.Random(self.seed).shuffle(mixed)
        return mixed

    def _draw(self, name: str, rows: list[Record], target: float, seed: int) -> list[Record]:
        rng = random.Random(seed)
        drawn: list[Record] = []
        total = 0
        rounds = 0
        while total < target:
            order = list(rows)
            rng.shuffle(order)
            for record in order:
                if total >= target:
                    break
                copy = {**record, "source": name}
                if rounds and "id" in copy:  # a repeated record keeps its id, marked
                    copy["id"] = f"{copy['id']}~{rounds}"
                drawn.append(copy)
                total += self._size(record)
            rounds += 1
        return drawn

    def report(self, splits: dict[str, Iterable[Record]]) -> dict[str, Any]:
        """Per split, each source's records and tokens and their shares, beside the weights."""
        out: dict[str, Any] = {"by": self.by, "weights": self.shares}
        for split, rows in splits.items():
            counts: dict[str, dict[str, float]] = {}
            for record in rows:
                entry = counts.setdefault(record.get("source", "?"), {"records": 0, "tokens": 0})
                entry["records"] += 1
                entry["tokens"] += record_tokens(record, self.kind)
            n = sum(c["records"] for c in counts.values()) or 1
            t = sum(c["tokens"] for c in counts.values()) or 1
            for c in counts.values():
                c["share"], c["token_share"] = c["records"] / n, c["tokens"] / t
            out[split] = dict(sorted(counts.items()))
        return out
