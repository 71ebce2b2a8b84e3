"""`kollm data clean`: the quick path on one text field, no recipe needed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kollm.config import DedupConfig
from kollm.data.io import read_records, write_jsonl
from kollm.data.pipeline import Advance, counted, run_steps
from kollm.data.records import field_kind
from kollm.data.steps.dedup import ExactDeduplicator, MinhashDeduplicator
from kollm.data.steps.filters import PlaceholderOnlyFilter
from kollm.data.steps.normalise import TextNormaliser
from kollm.data.steps.pii import PiiMasker


def clean_file(
    in_path: Path,
    out_path: Path,
    field_name: str,
    skip_bad_lines: bool = False,
    advance: Advance | None = None,
) -> dict[str, Any]:
    """`kollm data clean`: normalise, mask PII and dedup one field; other fields pass through."""
    kind = field_kind(field_name)
    dedup = DedupConfig()
    steps = [
        TextNormaliser(kind.text_fields),
        PiiMasker(kind.text_fields),
        PlaceholderOnlyFilter(kind.required_texts),
        ExactDeduplicator(kind.key_fields),
        MinhashDeduplicator(kind.key_fields, dedup.threshold, dedup.ngram, dedup.num_perm),
    ]
    bad_lines: list[dict] | None = [] if skip_bad_lines else None
    dropped: list[dict] = []
    records = counted(read_records(in_path, kind, "auto", bad_lines), advance)
    kept = write_jsonl(out_path, run_steps(steps, records, dropped))
    side = out_path.with_name(out_path.stem + ".dropped.jsonl")
    write_jsonl(side, dropped)
    if bad_lines:
        write_jsonl(out_path.with_name(out_path.stem + ".bad_lines.jsonl"), bad_lines)
    return {
        "input": str(in_path),
        "output": str(out_path),
        "kept": kept,
        "bad_lines": len(bad_lines or []),
        "steps": [step.stats.as_dict() for step in steps],
    }
