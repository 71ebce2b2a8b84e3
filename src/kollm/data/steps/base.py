"""The step protocol: a step takes records and yields the ones it keeps, counting the rest."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from kollm.data.records import Record


@dataclass
class StepStats:
    step: str
    seen: int = 0
    kept: int = 0
    dropped: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    """Why records were dropped, with counts."""
    changes: Counter[str] = field(default_factory=Counter)
    """What was changed in kept records (PII masked by type, records normalised)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "seen": self.seen,
            "kept": self.kept,
            "dropped": self.dropped,
            "reasons": dict(self.reasons.most_common()),
            "changes": dict(self.changes.most_common()),
        }


@dataclass(frozen=True)
class Drop:
    reason: str
    detail: dict[str, Any] | None = None


class Step:
    """One pipeline step. Subclasses implement `process`: change the record in place and return
    None to keep it, or return a Drop."""

    name: ClassVar[str] = "step"

    def __init__(self) -> None:
        self.stats = StepStats(self.name)

    def process(self, record: Record) -> Drop | None:
        raise NotImplementedError

    def run(self, records: Iterable[Record], dropped: list[dict] | None = None) -> Iterator[Record]:
        for record in records:
            self.stats.seen += 1
            verdict = self.process(record)
            if verdict is None:
                self.stats.kept += 1
                yield record
                continue
            self.stats.dropped += 1
            self.stats.reasons[verdict.reason] += 1
            if dropped is not None:
                entry = {"step": self.name, "reason": verdict.reason, **(verdict.detail or {})}
                dropped.append({**entry, "record": record})
