"""The data stage on Ray Data (`data.executor: ray`): the steps of pipeline.prepare over sharded
input, with the same kept records as the local run.

    read (one task per shard) -> normalise, PII, filters (map_batches over the same Step
    objects) -> exact dedup (grouped by key hash, the earliest record stays) -> near dedup
    (MinHash signatures per batch, one row per LSH band, grouped by band -> verified pairs ->
    clusters) ->
    split or mix -> write (sharded JSONL or Parquet, manifest.json, stats.json, report/)

Every record carries an order key (split, shard, row), so "earlier" means what it means in the
local run: train before dev before test, shards in name order, rows in file order. Records
travel as JSON strings: Arrow would otherwise infer one schema for records of different shapes.

Near-duplicates follow the local step's rule exactly. The local step is greedy: a record goes
when an earlier *kept* record shares an LSH band with it and their estimated Jaccard similarity
reaches the threshold. That depends on order (A~B, B~C, A!~C keeps A and C), so clusters alone
(one survivor each) would not agree with it. Here the verified pairs come to the driver (not the
corpus: ~200 bytes a pair in Python, one per near-duplicate and more in clusters), union-find joins
them into clusters, and each cluster is walked in order keeping what the local step keeps.

A `data.mix` source is read as its own split (`mix:NAME`), so the steps and the shared dedup
index treat it as locally. CorpusMixer's draw depends on each record's size alone (shuffles
permute by length), so the driver draws over (order key, words) per record and each block
expands the records drawn, a repeat once per draw. The EDA report's counts add up (value ->
count), so each written block counts its records and the driver merges them.

Why not datatrove's Ray executor or Data-Juicer's Ray MinHash deduplicator: both hash their own
shingles with their own functions and join band collisions without checking the similarity, so
their kept records differ from the local step's; neither is a dependency here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kollm.config import DataConfig
from kollm.data.io import DataError, read_records, shard_paths, write_json
from kollm.data.io import read_jsonl as read_split
from kollm.data.pipeline import PrepareResult, build_steps, run_steps, split_records
from kollm.data.pipeline import _ordered as ordered_splits
from kollm.data.records import KINDS
from kollm.data.report import SAMPLE, ReportCounts, report_from_counts, write_report
from kollm.data.steps.base import Step, StepStats
from kollm.data.steps.dedup import ExactDeduplicator, MinhashDeduplicator
from kollm.data.steps.mix import CorpusMixer, record_tokens

BATCH = 1024  # records per map_batches call: a signature batch, and one stats row
READ_CHUNK = 4096  # rows per block a shard reader yields
PARTITION_ROWS = 200_000  # rows per shuffle partition
SHARD_BITS, ROW_BITS = 22, 34  # order key = split rank | shard | row within the shard
SCHEMA = pa.schema(
    [
        ("status", pa.string()),  # kept, dropped, bad, stats, count, error
        ("split", pa.string()),
        ("order", pa.int64()),
        ("id", pa.string()),
        ("record", pa.string()),  # the record as JSON
        ("detail", pa.string()),  # why it was dropped, or a batch's step stats, as JSON
        ("key", pa.binary()),  # the exact-dedup key
    ]
)
BAND_SCHEMA = pa.schema(
    [("band", pa.binary()), ("order", pa.int64()), ("id", pa.string()), ("sig", pa.binary())]
)
PAIR_SCHEMA = pa.schema(
    [
        ("a", pa.int64()),
        ("b", pa.int64()),
        ("id_a", pa.string()),
        ("sim", pa.float64()),
    ]
)


def order_key(rank: int, shard: int, row: int) -> int:
    return (rank << (SHARD_BITS + ROW_BITS)) | (shard << ROW_BITS) | row


def _rows(rows: list[dict[str, Any]]) -> pa.Table:
    full = [{name: row.get(name) for name in SCHEMA.names} for row in rows]
    return pa.Table.from_pylist(full, schema=SCHEMA)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)


# --- steps that every worker builds once ------------------------------------------------------

_STEPS: dict[str, list[Step]] = {}


def _steps(cfg_json: str) -> list[Step]:
    """The recipe's steps, built once per worker process (a tokenizer is slow to load)."""
    if cfg_json not in _STEPS:
        cfg = DataConfig.model_validate_json(cfg_json)
        _STEPS[cfg_json] = build_steps(cfg, KINDS[cfg.kind])
    return _STEPS[cfg_json]


def _step(cfg_json: str, kind: type) -> Any:
    return next(s for s in _steps(cfg_json) if isinstance(s, kind))


def _record_steps(steps: list[Step]) -> list[Step]:
    """The steps that look at one record at a time."""
    return [s for s in steps if not isinstance(s, ExactDeduplicator | MinhashDeduplicator)]


# --- read -------------------------------------------------------------------------------------


def _read_shard(batch: dict[str, np.ndarray], kind: str, fmt: str, skip_bad: bool):
    """One shard's records (status kept), bad lines, and a count row; a bad line without
    skip_bad_lines is an `error` row the driver raises."""
    for split, rank, shard, path, source in zip(
        batch["split"], batch["rank"], batch["shard"], batch["path"], batch["source"], strict=True
    ):
        rows: list[dict[str, Any]] = []
        bad: list[dict] | None = [] if skip_bad else None
        n = 0
        try:
            for record in read_records(Path(path), KINDS[kind], fmt, bad):
                if source:  # a data.mix source: its records carry its name, as locally
                    record["source"] = str(source)
                order = order_key(int(rank), int(shard), n)
                rows.append(
                    {"status": "kept", "split": split, "order": order, "record": _dumps(record)}
                )
                n += 1
                if len(rows) >= READ_CHUNK:
                    yield _rows(rows)
                    rows = []
        except DataError as err:
            rows.append({"status": "error", "split": split, "detail": str(err)})
        rows += [
            {
                "status": "bad",
                "order": order_key(int(rank), int(shard), b["line"]),
                "record": _dumps(b),
            }
            for b in bad or []
        ]
        count = {"split": split, "shard": int(shard), "records": n}
        yield _rows([*rows, {"status": "count", "split": split, "detail": _dumps(count)}])


def _input_shards(cfg: DataConfig) -> list[dict[str, Any]]:
    """(split, rank, shard, path, source) of every input file, ranked as the local run reads
    them; `source` names a data.mix source (`mix:NAME` splits), else is empty."""
    for i, m in enumerate(cfg.mix or []):
        if not Path(m.input).exists():
            raise DataError(f"data.mix[{i}] ({m.name}): {m.input}: no such file or directory")
    splits = ordered_splits(cfg.input_files)
    return [
        {
            "split": split,
            "rank": rank,
            "shard": shard,
            "path": str(path),
            "source": split.removeprefix("mix:") if cfg.mix else "",
        }
        for rank, split in enumerate(splits)
        for shard, path in enumerate(shard_paths(Path(cfg.input_files[split]), cfg.format))
    ]


def _only(ds, statuses: tuple[str, ...]):
    """The rows of these statuses."""
    wanted = pa.array(statuses, pa.string())
    return ds.map_batches(
        lambda t: t.filter(pc.is_in(t["status"], wanted)), batch_format="pyarrow", batch_size=None
    )


def _collect(ds, statuses: tuple[str, ...]) -> list[tuple[str, str]]:
    """(status, detail) of the rows of these statuses (few: one per shard or batch)."""
    return [
        row
        for batch in _only(ds, statuses).iter_batches(batch_format="pyarrow")
        for row in zip(batch["status"].to_pylist(), batch["detail"].to_pylist(), strict=True)
    ]


def _offsets(counts: list[str], splits: list[str]) -> tuple[dict[str, int], dict[str, int]]:
    """How many records of its split come before each shard (ids `{split}-{i:06d}` number the
    records across shards as the local run does), and the records read per split."""
    rows = sorted((json.loads(c) for c in counts), key=lambda c: (c["split"], c["shard"]))
    offsets: dict[str, int] = {}
    totals = dict.fromkeys(splits, 0)
    for c in rows:
        offsets[f"{c['split']}/{c['shard']}"] = totals[c["split"]]
        totals[c["split"]] += c["records"]
    return offsets, totals


# --- normalise, PII, filters ------------------------------------------------------------------


def _clean_batch(table: pa.Table, cfg_json: str, offsets: dict[str, int]) -> pa.Table:
    """The record-at-a-time steps over one batch: kept rows (with their exact-dedup key),
    dropped rows, and one row of this batch's step stats."""
    steps = _record_steps(_steps(cfg_json))
    exact = next((s for s in _steps(cfg_json) if isinstance(s, ExactDeduplicator)), None)
    for step in steps:
        step.stats = StepStats(step.name)
    where: dict[int, tuple[str, int]] = {}
    records = []
    for split, order, text in zip(
        table["split"].to_pylist(),
        table["order"].to_pylist(),
        table["record"].to_pylist(),
        strict=True,
    ):
        record = json.loads(text)
        shard, row = (order >> ROW_BITS) & ((1 << SHARD_BITS) - 1), order & ((1 << ROW_BITS) - 1)
        record.setdefault("id", f"{split}-{offsets[f'{split}/{shard}'] + row:06d}")
        where[id(record)] = (split, order)
        records.append(record)
    dropped: list[dict] = []
    rows = [_kept_row(r, where, exact) for r in run_steps(steps, records, dropped)]
    rows += [_dropped_row(d, where) for d in dropped]
    rows.append({"status": "stats", "detail": _dumps([s.stats.as_dict() for s in steps])})
    return _rows(rows)


def _kept_row(record: dict, where: dict, exact: ExactDeduplicator | None) -> dict[str, Any]:
    split, order = where[id(record)]
    key = exact.key(record) if exact is not None else b""
    return {
        "status": "kept",
        "split": split,
        "order": order,
        "id": str(record["id"]),
        "record": _dumps(record),
        "key": key,
    }


def _dropped_row(entry: dict, where: dict) -> dict[str, Any]:
    record = entry["record"]
    split, order = where[id(record)]
    detail = {k: v for k, v in entry.items() if k != "record"}
    return {
        "status": "dropped",
        "split": split,
        "order": order,
        "id": str(record["id"]),
        "record": _dumps(record),
        "detail": _dumps(detail),
    }


def _merge_stats(batches: list[str], names: list[str]) -> list[dict[str, Any]]:
    """The batches' step stats added up, in step order."""
    merged = {name: StepStats(name) for name in names}
    for text in batches:
        for s in json.loads(text):
            m = merged[s["step"]]
            m.seen, m.kept, m.dropped = (
                m.seen + s["seen"],
                m.kept + s["kept"],
                m.dropped + s["dropped"],
            )
            m.reasons.update(s["reasons"])
            m.changes.update(s["changes"])
    return [merged[name].as_dict() for name in names]


def _dedup_stats(name: str, seen: int, dropped: int, reason: str) -> dict[str, Any]:
    reasons = Counter({reason: dropped}) if dropped else Counter()
    return StepStats(name, seen, seen - dropped, dropped, reasons).as_dict()


# --- exact dedup ------------------------------------------------------------------------------


def _runs(keys: list) -> tuple[np.ndarray, np.ndarray]:
    """For sorted keys: whether each row starts a run of equal keys, and its run's first row."""
    starts = np.ones(len(keys), dtype=bool)
    starts[1:] = [keys[i] != keys[i - 1] for i in range(1, len(keys))]
    first = np.flatnonzero(starts)[np.cumsum(starts) - 1]
    return starts, first


def _grouped(ds, key: str, partitions: int, fn, **fn_kwargs):
    """`fn` over blocks that each hold whole groups of `key`: what Ray Data's map_groups does
    with the sort shuffle (sort, then whole blocks), without calling Python once per group,
    which for band keys (nearly all groups of one row) was most of the stage's time."""
    return (
        ds.repartition(partitions)
        .sort(key)
        .map_batches(fn, fn_kwargs=fn_kwargs, batch_format="pyarrow", batch_size=None)
    )


def _first_of_each_key(table: pa.Table) -> pa.Table:
    """Whole key groups: the earliest record of each key stays, the rest are its exact
    duplicates."""
    if table.num_rows < 2:
        return table
    table = table.sort_by([("key", "ascending"), ("order", "ascending")])
    starts, first = _runs(table["key"].to_pylist())
    if starts.all():
        return table
    ids = table["id"].to_pylist()
    details = table["detail"].to_pylist()
    for i in np.flatnonzero(~starts).tolist():
        duplicate_of = ids[first[i]]
        entry = {"step": "exact_dedup", "reason": "exact_duplicate", "duplicate_of": duplicate_of}
        details[i] = _dumps(entry)
    status = np.where(starts, "kept", "dropped").tolist()
    table = table.set_column(0, "status", pa.array(status, pa.string()))
    index = SCHEMA.get_field_index("detail")
    return table.set_column(index, "detail", pa.array(details, pa.string()))


# --- near dedup -------------------------------------------------------------------------------


def _band_rows(table: pa.Table, cfg_json: str) -> pa.Table:
    """One row per record and LSH band: the band's hash values are the key (datasketch's
    MinHashLSH makes two records candidates when one band is equal), the signature rides along
    for the check."""
    if table.num_rows == 0:
        return BAND_SCHEMA.empty_table()
    near = _step(cfg_json, MinhashDeduplicator)
    bands, width = near.bands
    signatures = near.signatures([json.loads(t) for t in table["record"].to_pylist()])
    n = len(signatures)
    keys = [
        band.to_bytes(2, "big") + signatures[j, band * width : (band + 1) * width].tobytes()
        for band in range(bands)
        for j in range(n)
    ]
    columns = {
        "band": keys,
        "order": np.tile(table["order"].to_numpy(), bands),
        "id": table["id"].to_pylist() * bands,
        "sig": [s.tobytes() for s in signatures] * bands,
    }
    return pa.table(columns, schema=BAND_SCHEMA)


def _pairs_in_bands(table: pa.Table, threshold: float) -> pa.Table:
    """Whole band groups: the verified pairs (earlier a, later b) among records sharing a band
    (checked on the whole signature, as the local step checks its LSH candidates)."""
    if table.num_rows < 2:
        return PAIR_SCHEMA.empty_table()
    table = table.sort_by([("band", "ascending"), ("order", "ascending")])
    starts, _ = _runs(table["band"].to_pylist())
    bounds = np.append(np.flatnonzero(starts), table.num_rows)
    found: dict[str, list] = {"a": [], "b": [], "id_a": [], "sim": []}
    for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        if hi - lo > 1:
            _check_pairs(table.slice(lo, hi - lo), threshold, found)
    return pa.table(found, schema=PAIR_SCHEMA)


def _check_pairs(group: pa.Table, threshold: float, found: dict[str, list]) -> None:
    orders, ids = group["order"].to_pylist(), group["id"].to_pylist()
    sigs = [np.frombuffer(s, dtype=np.uint32) for s in group["sig"].to_pylist()]
    for i in range(len(orders) - 1):
        for j in range(i + 1, len(orders)):
            sim = MinhashDeduplicator.similarity(sigs[i], sigs[j])
            if sim >= threshold:
                for name, value in zip(found, (orders[i], orders[j], ids[i], sim), strict=True):
                    found[name].append(value)


def clusters(pairs: Iterable[tuple[int, int]]) -> list[list[int]]:
    """Connected components of the pair graph (union-find), each sorted, by first member."""
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for x in list(parent):
        groups.setdefault(find(x), []).append(x)
    return sorted(sorted(g) for g in groups.values())


def near_duplicates(pairs: list[tuple[int, int, str, float]]) -> dict[int, tuple[str, float]]:
    """What the local step drops, from the verified pairs (a, b, id of a, similarity), a < b:
    walking each cluster in order, a record goes when an earlier record that stayed is its
    near-duplicate. Returns order -> (id of the most similar such record, similarity)."""
    earlier: dict[int, dict[int, tuple[float, str]]] = {}
    for a, b, id_a, sim in pairs:
        earlier.setdefault(b, {})[a] = (sim, id_a)
    dropped: dict[int, tuple[str, float]] = {}
    for cluster in clusters((a, b) for a, b, _, _ in pairs):
        for x in cluster:
            kept = [
                (sim, -a, id_a) for a, (sim, id_a) in earlier.get(x, {}).items() if a not in dropped
            ]
            if kept:
                sim, _, id_a = max(kept)
                dropped[x] = (id_a, sim)
    return dropped


def _mark(table: pa.Table, orders: np.ndarray, details: list[str]) -> pa.Table:
    """Rows whose order is in `orders` (sorted) become dropped, with their detail."""
    if table.num_rows == 0 or len(orders) == 0:
        return table
    own = table["order"].to_numpy()
    at = np.minimum(np.searchsorted(orders, own), len(orders) - 1)
    hit = orders[at] == own
    status = np.where(hit, "dropped", table["status"].to_numpy(zero_copy_only=False))
    old = table["detail"].to_pylist()
    detail = [details[i] if h else d for i, h, d in zip(at, hit, old, strict=True)]
    table = table.set_column(0, "status", pa.array(status.tolist(), pa.string()))
    index = SCHEMA.get_field_index("detail")
    return table.set_column(index, "detail", pa.array(detail, pa.string()))


def _near_dedup(kept, cfg_json: str, threshold: float, rows: int):
    """Signatures -> band rows -> groupby band -> verified pairs (to the driver) -> clusters ->
    the rows marked dropped."""
    bands = kept.map_batches(
        _band_rows, fn_kwargs={"cfg_json": cfg_json}, batch_format="pyarrow", batch_size=BATCH
    )
    partitions = _partitions(rows * _step(cfg_json, MinhashDeduplicator).bands[0])
    pairs = _grouped(bands, "band", partitions, _pairs_in_bands, threshold=threshold)
    unique: dict[tuple[int, int], tuple[int, int, str, float]] = {}
    for batch in pairs.iter_batches(batch_format="pyarrow"):
        for a, b, id_a, sim in zip(*(batch[c].to_pylist() for c in PAIR_SCHEMA.names), strict=True):
            unique[(a, b)] = (a, b, id_a, sim)
    dropped = near_duplicates(list(unique.values()))
    orders = np.array(sorted(dropped), dtype=np.int64)
    details = [
        _dumps(
            {
                "step": "near_dedup",
                "reason": "near_duplicate",
                "duplicate_of": dropped[o][0],
                "similarity": round(dropped[o][1], 3),
            }
        )
        for o in orders.tolist()
    ]
    marked = kept.map_batches(
        _mark,
        fn_kwargs={"orders": orders, "details": details},
        batch_format="pyarrow",
        batch_size=None,
    )
    return marked


# --- splits and output ------------------------------------------------------------------------


def _set_split(
    table: pa.Table, orders: np.ndarray, splits: np.ndarray, positions: np.ndarray, names: list[str]
) -> pa.Table:
    """An unsplit input's records get the split the local run's seeded shuffle gives them, and
    their place in it as the order they are written in."""
    at = np.searchsorted(orders, table["order"].to_numpy())
    split = [names[c] for c in splits[at].tolist()]
    table = table.set_column(1, "split", pa.array(split, pa.string()))
    return table.set_column(2, "order", pa.array(positions[at], pa.int64()))


def _assign_splits(kept, dev: float, test: float, seed: int):
    """split_records on the driver over record indices, not records: 8 bytes of order key per
    kept record come to the driver, and the shuffle of their indices stays there."""
    batches = [
        b["order"].to_numpy()
        for b in kept.select_columns(["order"]).iter_batches(batch_format="pyarrow")
    ]
    orders = np.sort(np.concatenate(batches)) if batches else np.zeros(0, np.int64)
    cut = split_records(list(range(len(orders))), dev, test, seed)
    names = list(cut)
    splits = np.zeros(len(orders), dtype=np.int8)
    positions = np.zeros(len(orders), dtype=np.int64)
    for code, name in enumerate(names):
        splits[cut[name]] = code
        positions[cut[name]] = np.arange(len(cut[name]))
    fn_kwargs = {"orders": orders, "splits": splits, "positions": positions, "names": names}
    return kept.map_batches(
        _set_split, fn_kwargs=fn_kwargs, batch_format="pyarrow", batch_size=None
    ), names


# --- data.mix -------------------------------------------------------------------------------


def _order_and_tokens(table: pa.Table, kind: str) -> pa.Table:
    """(order key, whitespace words) of each kept record: all the mixer needs of it."""
    records = table["record"].to_pylist()
    tokens = [record_tokens(json.loads(text), KINDS[kind]) for text in records]
    return pa.table({"order": table["order"], "tokens": pa.array(tokens, pa.int64())})


def _mix_sizes(kept, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """The kept records' order keys, sorted, and their words: 16 bytes a record to the driver."""
    sizes = kept.map_batches(
        _order_and_tokens, fn_kwargs={"kind": kind}, batch_format="pyarrow", batch_size=BATCH
    )
    batches = [
        (b["order"].to_numpy(), b["tokens"].to_numpy())
        for b in sizes.iter_batches(batch_format="pyarrow")
        if b.num_rows
    ]
    if not batches:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    orders = np.concatenate([o for o, _ in batches])
    tokens = np.concatenate([t for _, t in batches])
    at = np.argsort(orders, kind="stable")
    return orders[at], tokens[at]


def mix_plan(cfg: DataConfig, orders: np.ndarray, tokens: np.ndarray):
    """pipeline.mixed_splits over record indices: each source (its rank in the order key) cut
    by split_records, its training part drawn by CorpusMixer.plan from the records' sizes.
    Returns {split: [(source, index into orders, repeat)] in output order} and the realised
    mix (stats.json's `mix`)."""
    ranks = orders >> (SHARD_BITS + ROW_BITS)
    parts = {
        split.removeprefix("mix:"): split_records(
            np.flatnonzero(ranks == rank).tolist(), cfg.split.dev, cfg.split.test, cfg.split.seed
        )
        for rank, split in enumerate(ordered_splits(cfg.input_files))
    }
    weights = {m.name: m.weight for m in cfg.mix}
    mixer = CorpusMixer(weights, KINDS[cfg.kind], cfg.mix_by, cfg.split.seed)
    sizes = {n: [mixer.size(t) for t in tokens[p["train"]].tolist()] for n, p in parts.items()}
    drawn = mixer.plan(sizes, cfg.mix_size)
    plan = {"train": [(n, parts[n]["train"][j], k) for n, j, k in drawn]}
    for split in ("dev", "test"):
        if any(split in p for p in parts.values()):
            plan[split] = [(n, i, 0) for n, p in parts.items() for i in p.get(split, [])]
    realised = {s: ((n, int(tokens[i])) for n, i, _ in rows) for s, rows in plan.items()}
    return plan, mixer.report_tokens(realised)


def _occurrences(plan: dict[str, list], orders: np.ndarray) -> dict[str, Any]:
    """Where each kept record goes, sorted by its order key: a record drawn twice appears
    twice, one not drawn not at all."""
    columns: dict[str, list] = {"order": [], "split": [], "position": [], "repeat": []}
    for code, rows in enumerate(plan.values()):
        columns["order"] += [int(orders[i]) for _, i, _ in rows]
        columns["split"] += [code] * len(rows)
        columns["position"] += range(len(rows))
        columns["repeat"] += [k for _, _, k in rows]
    at = np.argsort(np.array(columns["order"], np.int64), kind="stable")
    arrays = {k: np.array(v, np.int64)[at] for k, v in columns.items()}
    return {**arrays, "names": list(plan)}


def _set_mix(table: pa.Table, order, split, position, repeat, names: list[str]) -> pa.Table:
    """A block's kept records as the mix holds them: one row per time it was drawn, with its
    split and place there, a repeat's id marked `~N` (drawn_copy's rule)."""
    own = table["order"].to_numpy()
    lo, hi = np.searchsorted(order, own, "left"), np.searchsorted(order, own, "right")
    counts = hi - lo
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    occ = np.repeat(lo, counts) + np.arange(int(counts.sum())) - starts
    table = table.take(pa.array(np.repeat(np.arange(len(own)), counts)))
    ids, records = table["id"].to_pylist(), table["record"].to_pylist()
    for row, k in enumerate(repeat[occ].tolist()):
        if k:
            record = json.loads(records[row])
            record["id"] = ids[row] = f"{record['id']}~{k}"
            records[row] = _dumps(record)
    columns = {
        "split": pa.array([names[c] for c in split[occ].tolist()], pa.string()),
        "order": pa.array(position[occ], pa.int64()),
        "id": pa.array(ids, pa.string()),
        "record": pa.array(records, pa.string()),
    }
    for name, column in columns.items():
        table = table.set_column(SCHEMA.get_field_index(name), name, column)
    return table


def _assign_mix(kept, cfg: DataConfig):
    """The mixed splits on the cluster; to the driver only (order key, words) per record."""
    orders, tokens = _mix_sizes(kept, cfg.kind)
    plan, realised = mix_plan(cfg, orders, tokens)
    occurrences = _occurrences(plan, orders)
    mixed = kept.map_batches(
        _set_mix, fn_kwargs=occurrences, batch_format="pyarrow", batch_size=None
    )
    return mixed, list(plan), realised


SIDE_FILES = ("dropped", "bad_lines")  # written as JSONL whatever the output format


def _relabel(ds, name: str):
    """Rows to be written under `name` (dropped records, bad lines): the split column says so."""

    def relabel(t: pa.Table) -> pa.Table:
        return t.set_column(1, "split", pa.array([name] * t.num_rows, pa.string()))

    return ds.map_batches(relabel, batch_format="pyarrow", batch_size=None)


def _lines(table: pa.Table, name: str) -> list[str]:
    records = table["record"].to_pylist()
    if name != "dropped":
        return records
    details = table["detail"].to_pylist()
    return [
        _dumps({**json.loads(d), "record": json.loads(r)})
        for d, r in zip(details, records, strict=True)
    ]


def _write_file(
    table: pa.Table, root: str, name: str, fmt: str, report: dict[str, Any]
) -> dict[str, Any]:
    """One block's rows of one output as a file named by its first order key (the driver
    numbers the files afterwards); returns its manifest entry and, for dropped records, how
    many each step dropped, for a split's records what the EDA report counts."""
    table = table.sort_by("order")
    first = table["order"][0].as_py()
    fmt = "jsonl" if name in SIDE_FILES else fmt
    path = Path(root) / name / f"{first:020d}.{fmt}"
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        rows = pa.array([json.loads(r) for r in table["record"].to_pylist()])
        pq.write_table(pa.Table.from_struct_array(rows), path)
    else:
        path.write_text("".join(line + "\n" for line in _lines(table, name)), encoding="utf-8")
    steps = Counter(json.loads(d)["step"] for d in table["detail"].to_pylist() if d)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    return {
        "path": str(path),
        "name": name,
        "records": table.num_rows,
        "first": first,
        "sha256": sha,
        "steps": _dumps(steps if name == "dropped" else {}),
        "report": "" if name in SIDE_FILES else _report_counts(table, name, report),
    }


def _report_counts(table: pa.Table, name: str, report: dict[str, Any]) -> str:
    """The report's counts of these records; a record's position is (its split's place in
    the output, its order), the order the local report goes through the records in."""
    counts = ReportCounts(report["kind"])
    rank = report["ranks"][name]
    for order, text in zip(table["order"].to_pylist(), table["record"].to_pylist(), strict=True):
        counts.add(json.loads(text), [rank, order])
    return _dumps(counts.to_json())


def _write_block(table: pa.Table, root: str, fmt: str, report: dict[str, Any]) -> pa.Table:
    """A sorted block: one file for each output (split, dropped, bad_lines) it holds."""
    names = sorted(set(table["split"].to_pylist()))
    written = [
        _write_file(table.filter(pc.equal(table["split"], n)), root, n, fmt, report) for n in names
    ]
    return pa.Table.from_pylist(written)


def _write(ds, root: Path, fmt: str, partitions: int, report: dict) -> list[dict[str, Any]]:
    """Every output row, sorted by (output, order), as shards `<output>/part-NNNNN.<fmt>`;
    returns what was written, numbered in order."""
    written = (
        ds.repartition(partitions)
        .sort(["split", "order"])
        .map_batches(
            _write_block,
            fn_kwargs={"root": str(root), "fmt": fmt, "report": report},
            batch_format="pyarrow",
            batch_size=None,
        )
    )
    rows = [r for b in written.iter_batches(batch_format="pyarrow") for r in b.to_pylist()]
    entries = []
    numbers: Counter[str] = Counter()
    for row in sorted(rows, key=lambda r: (r["name"], r["first"])):
        name = row["name"]
        final = root / name / f"part-{numbers[name]:05d}{Path(row['path']).suffix}"
        numbers[name] += 1
        os.replace(row["path"], final)
        relative = final.relative_to(root).as_posix()
        entries.append(
            {
                "path": relative,
                "split": name,
                "records": row["records"],
                "sha256": row["sha256"],
                "steps": json.loads(row["steps"]),
                "report": row["report"],
            }
        )
    return entries


def manifest_sha256(entries: list[dict[str, Any]]) -> str:
    """sha256 over the output shards' paths and hashes: the data version the registry records."""
    digest = hashlib.sha256()
    for entry in sorted(entries, key=lambda e: e["path"]):
        digest.update(entry["path"].encode())
        digest.update(bytes.fromhex(entry["sha256"]))
    return digest.hexdigest()


def _swap_in(tmp: Path, output_dir: Path) -> None:
    """The finished output takes the place of the old one; nothing half-written is left."""
    old = output_dir.with_name(f".{output_dir.name}.old-{os.getpid()}")
    if output_dir.exists():
        os.replace(output_dir, old)
    os.replace(tmp, output_dir)
    shutil.rmtree(old, ignore_errors=True)


# --- the stage --------------------------------------------------------------------------------


def runtime_env() -> dict[str, Any]:
    """Workers import the driver's kollm (shipped as a py_module), so the steps they run are
    the steps the recipe was checked against, whatever the nodes have installed."""
    import kollm

    return {"py_modules": [str(Path(kollm.__file__).resolve().parent)]}


def prepare_on_ray(cfg: DataConfig, output_dir: Path) -> PrepareResult:
    """The data stage on Ray Data: writes `<split>/part-NNNNN.<fmt>`, dropped/, bad_lines/,
    manifest.json and stats.json. The result holds no records (they stay on the cluster)."""
    import ray

    started = not ray.is_initialized()
    if started:
        # "local": without an address Ray would attach to any cluster it finds on the machine.
        address = cfg.ray_address or os.environ.get("RAY_ADDRESS") or "local"
        ray.init(address=address, runtime_env=runtime_env(), log_to_driver=False)
    try:
        return _prepare(cfg, Path(output_dir))
    finally:
        if started:
            ray.shutdown()


def _partitions(rows: int) -> int:
    """Shuffle partitions for `rows` rows: Ray's default (200) would be 200 tasks and files
    for a sample; a partition holds some 200k rows."""
    return max(1, min(1000, -(-rows // PARTITION_ROWS)))


def _read(cfg: DataConfig):
    """Every input shard read by its own task (materialised on the cluster); returns it, the
    records read per split and the per-shard id offsets."""
    import ray

    shards = _input_shards(cfg)
    kwargs = {"kind": cfg.kind, "fmt": cfg.format, "skip_bad": cfg.skip_bad_lines}
    read = (
        ray.data.from_items(shards, override_num_blocks=len(shards))
        .map_batches(_read_shard, fn_kwargs=kwargs, batch_size=1, batch_format="numpy")
        .materialize()
    )
    notes = _collect(read, ("error", "count"))
    errors = sorted(d for status, d in notes if status == "error")
    if errors:
        raise DataError(errors[0])
    counts = [d for status, d in notes if status == "count"]
    offsets, totals = _offsets(counts, ordered_splits(cfg.input_files))
    return read, totals, offsets


def _clean(cfg: DataConfig, read, offsets: dict[str, int]):
    """Record steps, then exact and near dedup; returns the kept rows, the dropped rows and
    the record steps' stats (the dedup steps' are counted as their drops are written)."""
    cfg_json = cfg.model_dump_json()
    steps = _steps(cfg_json)
    cleaned = (
        _only(read, ("kept",))
        .map_batches(
            _clean_batch,
            fn_kwargs={"cfg_json": cfg_json, "offsets": offsets},
            batch_format="pyarrow",
            batch_size=BATCH,
        )
        .materialize()
    )
    stats = _merge_stats(
        [d for _, d in _collect(cleaned, ("stats",))], [s.name for s in _record_steps(steps)]
    )
    kept, dropped = _only(cleaned, ("kept",)), [_only(cleaned, ("dropped",))]
    rows = cleaned.count()
    if cfg.dedup.exact:
        grouped = _grouped(kept, "key", _partitions(rows), _first_of_each_key)
        kept, dropped = _split_off(grouped.materialize(), dropped)
    if cfg.dedup.near:
        marked = _near_dedup(kept, cfg_json, cfg.dedup.threshold, rows)
        kept, dropped = _split_off(marked.materialize(), dropped)
    return kept, dropped, stats


def _split_off(ds, dropped: list) -> tuple[Any, list]:
    return _only(ds, ("kept",)), [*dropped, _only(ds, ("dropped",))]


def _dedup_steps(cfg: DataConfig, entering: int, drops: Counter) -> list[dict[str, Any]]:
    """The dedup steps' stats: `entering` records reached them; `drops` counts by step."""
    stats = []
    for on, name, reason in (
        (cfg.dedup.exact, "exact_dedup", "exact_duplicate"),
        (cfg.dedup.near, "near_dedup", "near_duplicate"),
    ):
        if on:
            stats.append(_dedup_stats(name, entering, drops[name], reason))
            entering -= drops[name]
    return stats


@contextlib.contextmanager
def _sort_shuffle():
    """Groupby and sort through Ray Data's sort-based (pull) shuffle: plain tasks. The default
    hash shuffle starts aggregator actors first, seconds each, which a small run feels most."""
    from ray.data import DataContext

    context = DataContext.get_current()
    before = context.shuffle_strategy
    context.shuffle_strategy = "sort_shuffle_pull_based"
    try:
        yield
    finally:
        context.shuffle_strategy = before


def _prepare(cfg: DataConfig, output_dir: Path) -> PrepareResult:
    with _sort_shuffle():
        return _prepare_shuffled(cfg, output_dir)


def _prepare_shuffled(cfg: DataConfig, output_dir: Path) -> PrepareResult:
    read, read_counts, offsets = _read(cfg)
    kept, dropped, step_stats = _clean(cfg, read, offsets)
    splits, extra, rows = list(read_counts), {}, read.count()
    if cfg.mix:
        kept, splits, extra["mix"] = _assign_mix(kept, cfg)
        rows += sum(c["records"] for c in extra["mix"]["train"].values())
    elif splits == ["all"]:
        kept, splits = _assign_splits(kept, cfg.split.dev, cfg.split.test, cfg.split.seed)
    out = kept.union(_relabel(dropped[0].union(*dropped[1:]), "dropped"))
    out = out.union(_relabel(_only(read, ("bad",)), "bad_lines"))
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    try:
        report = {"kind": cfg.kind, "ranks": {s: i for i, s in enumerate(splits)}}
        written = _write(out, tmp, cfg.output_format, _partitions(rows), report)
        counts = ReportCounts(cfg.kind)
        for entry in written:
            if text := entry.pop("report"):
                counts.merge(ReportCounts.from_json(cfg.kind, json.loads(text)))
        stats = {**_stats(cfg, written, read_counts, step_stats, splits), **extra}
        write_json(tmp / "manifest.json", {"format": cfg.output_format, "files": written})
        write_json(tmp / "stats.json", stats)
        pages = _write_eda_report(cfg, tmp, counts, stats, splits)
        _swap_in(tmp, output_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    files = {"stats": output_dir / "stats.json", "manifest": output_dir / "manifest.json"}
    files.update({f"report_{k}": output_dir / v.relative_to(tmp) for k, v in pages.items()})
    return PrepareResult(output_dir, {}, stats, files)


def _stats(cfg: DataConfig, written: list[dict], read_counts: dict, step_stats: list, splits):
    """stats.json with the local run's keys and counts, from what was written."""
    drops = Counter()
    for entry in written:
        drops.update(entry.pop("steps"))
    entering = sum(read_counts.values()) - sum(s["dropped"] for s in step_stats)
    entries = [e for e in written if e["split"] not in SIDE_FILES]
    return {
        "kind": cfg.kind,
        "executor": "ray",
        "input": read_counts,
        "bad_lines": sum(e["records"] for e in written if e["split"] == "bad_lines"),
        "steps": step_stats + _dedup_steps(cfg, entering, drops),
        "output": {s: sum(e["records"] for e in entries if e["split"] == s) for s in splits},
        "manifest_sha256": manifest_sha256(entries),
    }


def _write_eda_report(
    cfg: DataConfig, root: Path, counts: ReportCounts, stats: dict, splits: list[str]
) -> dict[str, Path]:
    """report/ as the local run writes it, from the blocks' counts; characters per token is
    measured on the first records of the written splits, streamed (SAMPLE at most)."""
    sample: list[dict] = []
    for split in splits if cfg.report.tokenizer else []:
        if (root / split).is_dir() and len(sample) < SAMPLE:
            sample += read_split(root / split, limit=SAMPLE - len(sample))
    report_dir = root / "report"
    report = report_from_counts(
        counts, stats["output"], report_dir, cfg.report.tokenizer, cfg.report.top_topics, sample
    )
    write_json(report_dir / "report.json", report)
    return write_report(report, stats, report_dir)
