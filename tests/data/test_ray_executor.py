"""The data stage on Ray keeps the records the local run keeps: the bundled dialogues in shards,
with near-duplicates planted so that no pair shares a shard."""

import json
import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from kollm.config import DataConfig
from kollm.data.io import read_jsonl as read_split
from kollm.data.pipeline import prepare
from kollm.data.ray_executor import clusters, near_duplicates
from kollm.samples.generate import make_near_duplicate
from tests.conftest import read_jsonl, write_jsonl

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample"


def _sample(name: str, n: int) -> list[dict]:
    return read_jsonl(SAMPLE / name)[:n]


@pytest.fixture
def sharded(tmp_path):
    """Three train shards and a dev file. Shard 2's records have no id (numbered across shards);
    near-copies of shard 0 sit in shard 2 and of shard 2 in shard 0 (a copy before its
    original), an exact copy crosses shards, and dev holds a near and an exact copy of train."""
    rng = random.Random(5)
    rows = _sample("dialogsum_train.jsonl", 72)
    shards = [rows[0:24], rows[24:48], rows[48:72]]
    shards[2] += [make_near_duplicate(rng, r, f"near-a{i}") for i, r in enumerate(shards[0][:4])]
    shards[0] += [make_near_duplicate(rng, r, f"near-b{i}") for i, r in enumerate(shards[2][:3])]
    shards[1].append({**shards[0][5], "id": "exact-copy"})
    for record in shards[2]:
        record.pop("id")
    train = tmp_path / "train"
    train.mkdir()
    for i, shard in enumerate(shards):
        write_jsonl(train / f"part-{i}.jsonl", shard)
    with (train / "part-1.jsonl").open("a") as handle:
        handle.write("{not json}\n")
    dev = _sample("dialogsum_dev.jsonl", 16)
    dev += [make_near_duplicate(rng, rows[30], "dev-near"), {**rows[40], "id": "dev-exact"}]
    return {"train": str(train), "dev": str(write_jsonl(tmp_path / "dev.jsonl", dev))}


def _config(inputs, **extra) -> DataConfig:
    return DataConfig(
        input=inputs,
        kind="dialogue_summary",
        skip_bad_lines=True,
        report={"tokenizer": "whitespace"},
        **extra,
    )


def _shards(out: Path, split: str) -> list[dict]:
    files = sorted((out / split).glob("part-*"))
    if files and files[0].suffix == ".parquet":
        return [r for f in files for r in pq.read_table(f).to_pylist()]
    return [r for f in files for r in read_jsonl(f)]


def _counts(stats: dict) -> dict:
    return {k: stats[k] for k in ("input", "bad_lines", "steps", "output", "mix") if k in stats}


def _same_report(local: Path, ray: Path) -> dict:
    """The Ray run's EDA report has the local one's numbers and pages."""
    report = json.loads((ray / "report" / "report.json").read_text())
    assert report == json.loads((local / "report" / "report.json").read_text())
    for page in ("report.html", "report.md", *(f["histogram"] for f in report["fields"].values())):
        assert (ray / "report" / page).is_file(), page
    return report


def test_ray_keeps_what_the_local_run_keeps(tmp_path, sharded, ray_cluster):
    local = prepare(_config(sharded), tmp_path / "local")
    ray_cfg = _config(sharded, executor="ray", ray_address=ray_cluster.address)
    ray_run = prepare(ray_cfg, tmp_path / "ray")
    out = tmp_path / "ray"
    for split in ("train", "dev"):
        assert _shards(out, split) == local.splits[split], split
        assert read_split(out / split) == local.splits[split]  # as training reads a split
    reasons = {r for s in local.stats["steps"] for r in s["reasons"]}
    assert {"near_duplicate", "exact_duplicate"} <= reasons
    assert _counts(ray_run.stats) == _counts(local.stats)
    assert json.loads((out / "stats.json").read_text()) == ray_run.stats
    local_dropped = {
        (d["record"]["id"], d["reason"]) for d in read_jsonl(tmp_path / "local" / "dropped.jsonl")
    }
    assert {(d["record"]["id"], d["reason"]) for d in _shards(out, "dropped")} == local_dropped
    assert ("dev-near", "near_duplicate") in local_dropped
    assert ("train-000052", "near_duplicate") in local_dropped  # an original after its copy
    manifest = json.loads((out / "manifest.json").read_text())
    assert sum(f["records"] for f in manifest["files"] if f["split"] == "train") == len(
        local.splits["train"]
    )
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left
    report = _same_report(tmp_path / "local", out)
    assert report["topics"] and report["speakers_per_dialogue"] and report["chars_per_token"]

    # Unsplit input, Parquet shards: the split is the local run's seeded shuffle, in its order.
    unsplit = {"input": sharded["train"], "split": {"dev": 0.2, "seed": 3}}
    local = prepare(_config(unsplit["input"], split=unsplit["split"]), tmp_path / "local2")
    parquet = _config(
        unsplit["input"],
        split=unsplit["split"],
        executor="ray",
        ray_address=ray_cluster.address,
        output_format="parquet",
    )
    assert _counts(prepare(parquet, tmp_path / "ray2").stats) == _counts(local.stats)
    for split in ("train", "dev"):
        assert _shards(tmp_path / "ray2", split) == local.splits[split], split
        assert read_split(tmp_path / "ray2" / split) == local.splits[split]
    _same_report(tmp_path / "local2", tmp_path / "ray2")


def test_a_mix_on_ray_draws_what_the_local_mix_draws(tmp_path, ray_cluster):
    """Two sources, one a shard dir with records without ids, one holding an exact copy of
    the other's record and too small for its share (repeated); by tokens, with a test split."""
    domain = tmp_path / "domain"
    domain.mkdir()
    rows = _sample("dialogsum_train.jsonl", 40)
    for record in rows[20:]:
        record.pop("id")
    write_jsonl(domain / "part-0.jsonl", rows[:20])
    write_jsonl(domain / "part-1.jsonl", rows[20:])
    general = [*_sample("dialogsum_dev.jsonl", 15), {**rows[3], "id": "copy"}]
    write_jsonl(tmp_path / "general.jsonl", general)
    mix = {
        "mix": [
            {"input": str(domain), "weight": 0.5, "name": "domain"},
            {"input": str(tmp_path / "general.jsonl"), "weight": 0.5, "name": "general"},
        ],
        "mix_by": "tokens",
        "split": {"dev": 0.1, "test": 0.1, "seed": 7},
    }
    local = prepare(_config(None, **mix), tmp_path / "local")
    ray_run = prepare(
        _config(None, executor="ray", ray_address=ray_cluster.address, **mix), tmp_path / "ray"
    )
    for split in ("train", "dev", "test"):
        assert _shards(tmp_path / "ray", split) == local.splits[split], split
    assert any("~" in r["id"] for r in local.splits["train"])  # general was repeated
    dropped = {(d["record"]["id"], d["reason"]) for d in _shards(tmp_path / "ray", "dropped")}
    assert ("copy", "exact_duplicate") in dropped
    assert dropped == {
        (d["record"]["id"], d["reason"]) for d in read_jsonl(tmp_path / "local" / "dropped.jsonl")
    }
    assert _counts(ray_run.stats) == _counts(local.stats)
    assert set(ray_run.stats["mix"]["train"]) == {"domain", "general"}
    manifest = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    assert sum(f["records"] for f in manifest["files"] if f["split"] == "train") == len(
        local.splits["train"]
    )
    _same_report(tmp_path / "local", tmp_path / "ray")


def test_clusters_join_pairs_and_keep_what_the_greedy_step_keeps():
    assert clusters([(1, 2), (5, 6), (2, 3), (7, 6)]) == [[1, 2, 3], [5, 6, 7]]
    # 1~2, 2~3, 1!~3: 2 goes (1 stayed), 3 stays (its only near-duplicate, 2, went) -- the
    # local step's greedy rule, not "one record per cluster".
    assert near_duplicates([(1, 2, "a", 0.9), (2, 3, "b", 0.8)]) == {2: ("a", 0.9)}
    # Of the earlier records that stayed, the most similar is named.
    pairs = [(1, 3, "a", 0.7), (2, 3, "b", 0.95), (1, 4, "a", 0.9)]
    assert near_duplicates(pairs) == {3: ("b", 0.95), 4: ("a", 0.9)}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"executor": "spark"}, "executor"),
        ({"output_format": "parquet"}, "need data.executor: ray"),
    ],
)
def test_executor_settings_that_cannot_run_are_refused(extra, message):
    fields = {"kind": "dialogue_summary", "input": "in.jsonl", **extra}
    with pytest.raises(ValueError, match=message):
        DataConfig(**fields)
