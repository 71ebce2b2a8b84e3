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


Draw = tuple[str, int, int]  # (source, index of its record, 0 or the n-th repeat)


class CorpusMixer:
    """The draw depends on each source's record sizes alone, never on the records: the data
    stage on Ray sends the driver (source, size) per record and gets the local run's mix."""

    name = "corpus_mixer"

    def __init__(self, weights: dict[str, float], kind: RecordKind, by: str, seed: int) -> None:
        total = sum(weights.values())
        self.shares = {name: w / total for name, w in weights.items()}
        self.kind, self.by, self.seed = kind, by, seed

    def size(self, tokens: int) -> int:
        """A record's size in `by` units, from its whitespace words."""
        return 1 if self.by == "examples" else max(1, tokens)

    def mix(self, sources: dict[str, list[Record]], size: int | None = None) -> list[Record]:
        """`size` units (default: all the sources hold) drawn by the shares, shuffled."""
        sizes = {
            n: [self.size(record_tokens(r, self.kind)) for r in rows] for n, rows in sources.items()
        }
        return [drawn_copy(sources[n][i], n, k) for n, i, k in self.plan(sizes, size)]

    def plan(self, sizes: dict[str, list[int]], size: int | None = None) -> list[Draw]:
        """The mixed split as (source, record index, repeat), from each source's record sizes."""
        size = size or sum(sum(s) for s in sizes.values())
        drawn: list[Draw] = []
        for i, (name, own) in enumerate(sorted(sizes.items())):
            if own:
                drawn += self._draw(name, own, self.shares[name] * size, self.seed + i)
        # shuffle's permutation depends on the length alone, so indices shuffle as records would
        random.Random(self.seed).shuffle(drawn)
        return drawn

    def _draw(self, name: str, sizes: list[int], target: float, seed: int) -> list[Draw]:
        rng = random.Random(seed)
        drawn: list[Draw] = []
        total = 0
        rounds = 0
        while total < target:
            order = list(range(len(sizes)))
            rng.shuffle(order)
            for index in order:
                if total >= target:
                    break
                drawn.append((name, index, rounds))
                total += sizes[index]
            rounds += 1
        return drawn

    def report(self, splits: dict[str, Iterable[Record]]) -> dict[str, Any]:
        """Per split, each source's records and tokens and their shares, beside the weights."""
        return self.report_tokens(
            {
                split: ((r.get("source", "?"), record_tokens(r, self.kind)) for r in rows)
                for split, rows in splits.items()
            }
        )

    def report_tokens(self, splits: dict[str, Iterable[tuple[str, int]]]) -> dict[str, Any]:
        """`report` from each record's (source, tokens)."""
        out: dict[str, Any] = {"by": self.by, "weights": self.shares}
        for split, rows in splits.items():
            counts: dict[str, dict[str, float]] = {}
            for source, tokens in rows:
                entry = counts.setdefault(source, {"records": 0, "tokens": 0})
                entry["records"] += 1
                entry["tokens"] += tokens
            n = sum(c["records"] for c in counts.values()) or 1
            t = sum(c["tokens"] for c in counts.values()) or 1
            for c in counts.values():
                c["share"], c["token_share"] = c["records"] / n, c["tokens"] / t
            out[split] = dict(sorted(counts.items()))
        return out


def drawn_copy(record: Record, name: str, repeat: int) -> Record:
    """The record as the mix holds it: its source named, a repeat's id marked `~N`."""
    copy = {**record, "source": name}
    if repeat and "id" in copy:
        copy["id"] = f"{copy['id']}~{repeat}"
    return copy
