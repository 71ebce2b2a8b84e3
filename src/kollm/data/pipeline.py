"""The data stage: read -> normalise -> mask PII -> filter -> dedup -> split -> write + report.

Splits given by the input are kept; train is processed first and dev/test go through the same
dedup index, so a dev dialogue that copies a train one is dropped (no leakage).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kollm.config import DataConfig
from kollm.data.io import (
    DataError,
    detect_format,
    read_dataset_dir,
    read_records,
    shard_paths,
    write_dataset_dir,
    write_json,
    write_jsonl,
)
from kollm.data.records import (
    KINDS,
    Record,
    RecordError,
    RecordKind,
    validate_record,
)
from kollm.data.report import build_report, write_report
from kollm.data.steps.base import Step
from kollm.data.steps.dedup import ExactDeduplicator, MinhashDeduplicator
from kollm.data.steps.filters import HangulRatioFilter, LengthFilter, PlaceholderOnlyFilter
from kollm.data.steps.mix import CorpusMixer
from kollm.data.steps.normalise import TextNormaliser
from kollm.data.steps.pii import PiiMasker
from kollm.text.normalize import NormalizeOptions
from kollm.text.pii import PiiOptions

SPLIT_ORDER = ("train", "dev", "validation", "test")
Advance = Callable[[int], None]


@dataclass
class PrepareResult:
    output_dir: Path
    splits: dict[str, list[Record]]
    stats: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)


def build_steps(cfg: DataConfig, kind: RecordKind) -> list[Step]:
    """The steps the recipe turns on, in pipeline order."""
    steps: list[Step] = []
    if cfg.normalize.enabled:
        options = NormalizeOptions(cfg.normalize.max_repeat, cfg.normalize.fullwidth_to_ascii)
        steps.append(TextNormaliser(kind.text_fields, options))
    if cfg.pii.enabled:
        steps.append(PiiMasker(kind.text_fields, PiiOptions(frozenset(cfg.pii.types))))
    if cfg.filters.drop_placeholder_only:
        steps.append(PlaceholderOnlyFilter(kind.required_texts))
    if cfg.filters.lengths:
        steps.append(LengthFilter(cfg.filters.lengths, cfg.filters.tokenizer))
    if cfg.filters.min_hangul_ratio > 0:
        steps.append(HangulRatioFilter(kind.key_fields, cfg.filters.min_hangul_ratio))
    dedup_fields = tuple(cfg.dedup.fields or kind.key_fields)
    if cfg.dedup.exact:
        steps.append(ExactDeduplicator(dedup_fields))
    if cfg.dedup.near:
        d = cfg.dedup
        steps.append(MinhashDeduplicator(dedup_fields, d.threshold, d.ngram, d.num_perm))
    return steps


def run_steps(
    steps: list[Step], records: Iterable[Record], dropped: list[dict] | None = None
) -> Iterator[Record]:
    """Chain the steps lazily: each record flows through every step before the next is read."""
    stream: Iterable[Record] = records
    for step in steps:
        stream = step.run(stream, dropped)
    yield from stream


def _with_ids(records: Iterable[Record], split: str) -> Iterator[Record]:
    for i, record in enumerate(records):
        record.setdefault("id", f"{split}-{i:06d}")
        yield record


def counted(records: Iterable[Record], advance: Advance | None) -> Iterator[Record]:
    """Pass records through, advancing the progress bar for each."""
    for record in records:
        yield record
        if advance is not None:
            advance(1)


def read_inputs(cfg: DataConfig, kind: RecordKind, bad_lines: list[dict] | None):
    """Input records per split name; `all` when the input has no splits, `mix:NAME` for each
    source of a mix (its records carry `source: NAME`)."""
    if cfg.mix:
        return {
            f"mix:{m.name}": _mix_source(m, i, kind, cfg, bad_lines) for i, m in enumerate(cfg.mix)
        }
    sources = cfg.input_files
    splits: dict[str, Iterable[Record]] = {}
    for split, raw_path in sources.items():
        path = Path(raw_path)
        if detect_format(path, cfg.format) == "datasets":
            for name, rows in read_dataset_dir(path).items():
                splits[name if split == "all" else split] = _validated(rows, kind, path, bad_lines)
        else:
            splits[split] = read_shards(path, kind, cfg.format, bad_lines)
    return splits


def read_shards(path: Path, kind: RecordKind, fmt: str, bad_lines: list[dict] | None):
    """Records of one file, or of a dir's shards one after another in name order."""
    for shard in shard_paths(path, fmt):
        yield from read_records(shard, kind, fmt, bad_lines)


def _mix_source(m, i: int, kind: RecordKind, cfg: DataConfig, bad_lines) -> Iterator[Record]:
    path = Path(m.input)
    if not path.exists():
        raise DataError(f"data.mix[{i}] ({m.name}): {path}: no such file or directory")
    for record in read_shards(path, kind, cfg.format, bad_lines):
        record["source"] = m.name
        yield record


def _validated(rows: list[Any], kind: RecordKind, path: Path, bad_lines: list[dict] | None):
    for i, row in enumerate(rows, start=1):
        try:
            yield validate_record(row, kind)
        except RecordError as err:
            if bad_lines is None:
                raise DataError(f"{path}: row {i}: {err}") from err
            bad_lines.append({"file": str(path), "line": i, "error": str(err), "row": row})


def split_records(records: list[Record], dev: float, test: float, seed: int):
    """Shuffle with `seed` and cut into train/dev/test by share."""
    shuffled = list(records)
    random.Random(seed).shuffle(shuffled)
    n_dev, n_test = round(len(shuffled) * dev), round(len(shuffled) * test)
    splits = {"train": shuffled[n_dev + n_test :], "dev": shuffled[:n_dev]}
    if test > 0:
        splits["test"] = shuffled[n_dev : n_dev + n_test]
    return splits


def _ordered(names: Iterable[str]) -> list[str]:
    rank = {name: i for i, name in enumerate(SPLIT_ORDER)}
    return sorted(names, key=lambda n: (rank.get(n, len(rank)), n))


def manifest_hash(files: Iterable[Path]) -> str:
    """sha256 over the output files' names and bytes: the data version the registry records."""
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(path.name.encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def clean_splits(
    cfg: DataConfig, kind: RecordKind, advance: Advance | None = None
) -> tuple[dict[str, list[Record]], list[Step], list[dict], list[dict], dict[str, int]]:
    """Run the steps over every input split; returns splits, steps, dropped, bad lines, counts."""
    bad_lines: list[dict] | None = [] if cfg.skip_bad_lines else None
    dropped: list[dict] = []
    steps = build_steps(cfg, kind)
    inputs = read_inputs(cfg, kind, bad_lines)
    read_counts: dict[str, int] = {}
    cleaned: dict[str, list[Record]] = {}
    for split in _ordered(inputs):
        records = list(counted(_with_ids(inputs[split], split), advance))
        read_counts[split] = len(records)
        cleaned[split] = list(run_steps(steps, records, dropped))
    if cfg.mix:
        cleaned = mixed_splits(cfg, kind, cleaned)
    elif set(cleaned) == {"all"}:
        cleaned = split_records(cleaned["all"], cfg.split.dev, cfg.split.test, cfg.split.seed)
    return cleaned, steps, dropped, bad_lines or [], read_counts


def mixed_splits(cfg: DataConfig, kind: RecordKind, cleaned: dict[str, list[Record]]):
    """Each source split alone; dev and test keep every source, train is drawn by weight."""
    parts = {
        name.removeprefix("mix:"): split_records(
            rows, cfg.split.dev, cfg.split.test, cfg.split.seed
        )
        for name, rows in cleaned.items()
    }
    mixer = CorpusMixer({m.name: m.weight for m in cfg.mix}, kind, cfg.mix_by, cfg.split.seed)
    splits = {"train": mixer.mix({n: p["train"] for n, p in parts.items()}, cfg.mix_size)}
    for split in ("dev", "test"):
        if any(split in p for p in parts.values()):
            splits[split] = [r for p in parts.values() for r in p.get(split, [])]
    return splits


def prepare(cfg: DataConfig, output_dir: Path, advance: Advance | None = None) -> PrepareResult:
    """The whole data stage; writes splits, a datasets dir, stats.json, dropped.jsonl. With
    `data.executor: ray` the same steps run on Ray Data (kollm.data.ray_executor)."""
    if cfg.executor == "ray":
        from kollm.data.ray_executor import prepare_on_ray

        return prepare_on_ray(cfg, output_dir)
    kind = KINDS[cfg.kind]
    splits, steps, dropped, bad_lines, read_counts = clean_splits(cfg, kind, advance)
    files = {name: output_dir / f"{name}.jsonl" for name in splits}
    for name, rows in splits.items():
        write_jsonl(files[name], rows)
    write_dataset_dir(output_dir / "dataset", splits)
    files["dropped"] = output_dir / "dropped.jsonl"
    write_jsonl(files["dropped"], dropped)
    if bad_lines:
        files["bad_lines"] = output_dir / "bad_lines.jsonl"
        write_jsonl(files["bad_lines"], bad_lines)
    stats = {
        "kind": cfg.kind,
        "input": read_counts,
        "bad_lines": len(bad_lines),
        "steps": [step.stats.as_dict() for step in steps],
        "output": {name: len(rows) for name, rows in splits.items()},
        "manifest_sha256": manifest_hash(files[name] for name in splits),
    }
    if cfg.mix:
        weights = {m.name: m.weight for m in cfg.mix}
        stats["mix"] = CorpusMixer(weights, kind, cfg.mix_by, cfg.split.seed).report(splits)
    files["stats"] = output_dir / "stats.json"
    write_json(files["stats"], stats)
    report_dir = output_dir / "report"
    report = build_report(splits, cfg.kind, report_dir, cfg.report.tokenizer, cfg.report.top_topics)
    write_json(report_dir / "report.json", report)
    files.update({f"report_{k}": v for k, v in write_report(report, stats, report_dir).items()})
    return PrepareResult(output_dir, splits, stats, files)
