"""Data-stage benchmark: docs/s of the clean pipeline and of near-dup dedup, against datasketch.

    .venv/bin/python bench/data_bench.py [--docs 50000] [--near-share 0.05] [--ray-docs 20000]

Both dedup runs see the same shingles (character n-grams of the same text) and parameters;
the baseline drives datasketch's MinHash (update_batch, SHA-1) and MinHashLSH directly. Recall
is the share of planted near-duplicates (one turn dropped, three particles changed) dropped.
The dedup line reads: `dedup/datasketch R  recall_ours X  recall_datasketch Y`.

With `--ray-docs N` (0 skips it) the whole stage (read, steps, dedup, split, write) runs on the
first N dialogues in 4 JSONL shards, locally and then on a Ray started here with one and with
two worker CPUs: `ray/local` is local seconds over Ray seconds. It holds /tmp/kollm-ray.lock
while Ray lives, as the test fixture does (`ray stop --force` there would end this Ray too).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import random
import tempfile
import time
from pathlib import Path

from datasketch import MinHash, MinHashLSH

from kollm.config import DataConfig
from kollm.data.pipeline import build_steps, prepare, run_steps
from kollm.data.records import KINDS
from kollm.data.steps.dedup import LSH_WEIGHTS, MinhashDeduplicator, shingles
from kollm.samples.generate import generate_dialogues, make_near_duplicate


def corpus(n_docs: int, near_share: float, seed: int) -> tuple[list[dict], set[str]]:
    """`n_docs` dialogues, of which `near_share` are planted near-copies, each placed somewhere
    after its original."""
    rng = random.Random(seed)
    n_near = int(n_docs * near_share)
    base = list(generate_dialogues(n_docs - n_near, seed, "bench", noise=False))
    inserts: dict[int, list[dict]] = {}
    for i in range(n_near):
        j = rng.randrange(len(base))
        copy = make_near_duplicate(rng, base[j], f"near_{i:06d}")
        inserts.setdefault(rng.randint(j + 1, len(base)), []).append(copy)
    docs = []
    for position in range(len(base) + 1):
        docs.extend(inserts.get(position, []))
        if position < len(base):
            docs.append(base[position])
    return docs, {d["id"] for copies in inserts.values() for d in copies}


def ours(docs: list[dict], threshold: float, ngram: int, num_perm: int) -> tuple[float, set[str]]:
    step = MinhashDeduplicator(("dialogue",), threshold, ngram, num_perm)
    start = time.perf_counter()
    kept = {r["id"] for r in step.run(dict(d) for d in docs)}
    return time.perf_counter() - start, {d["id"] for d in docs} - kept


def datasketch_baseline(docs: list[dict], threshold: float, ngram: int, num_perm: int):
    """The same job with datasketch alone: LSH candidates, then MinHash.jaccard >= threshold."""
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=LSH_WEIGHTS)
    stored: dict[str, MinHash] = {}
    dropped = set()
    start = time.perf_counter()
    for doc in docs:
        minhash = MinHash(num_perm=num_perm)
        minhash.update_batch([s.encode("utf-8") for s in shingles(doc["dialogue"], ngram)])
        if any(minhash.jaccard(stored[key]) >= threshold for key in lsh.query(minhash)):
            dropped.add(doc["id"])
        else:
            lsh.insert(doc["id"], minhash)
            stored[doc["id"]] = minhash
    return time.perf_counter() - start, dropped


def whole_pipeline(docs: list[dict]) -> float:
    cfg = DataConfig(input="-", kind="dialogue_summary")
    steps = build_steps(cfg, KINDS["dialogue_summary"])
    start = time.perf_counter()
    for _ in run_steps(steps, (dict(d) for d in docs)):
        pass
    return time.perf_counter() - start


def stage_on_ray(docs: list[dict], workers_list: tuple[int, ...] = (1, 2)) -> list[str]:
    """docs/s of the whole stage locally and on Ray with 1 and 2 worker CPUs, as lines."""
    # A local Ray with token auth (its default once ~/.ray/auth_token exists) would leave a
    # token that later `ray start` clusters on this machine require.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    from kollm.data.ray_executor import runtime_env

    tmp = Path(tempfile.mkdtemp(prefix="kollm-data-bench-"))
    shards = tmp / "train"
    shards.mkdir()
    for i in range(4):
        part = docs[i * len(docs) // 4 : (i + 1) * len(docs) // 4]
        text = "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in part)
        (shards / f"part-{i}.jsonl").write_text(text, encoding="utf-8")
    base = {"input": str(shards), "kind": "dialogue_summary", "report": {"tokenizer": None}}
    start = time.perf_counter()
    local = prepare(DataConfig(**base), tmp / "local")
    t_local = time.perf_counter() - start
    lines = [f"whole stage, local   : {len(docs) / t_local:10.0f} docs/s"]
    with open("/tmp/kollm-ray.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for workers in workers_list:
            ray.init(
                address="local", num_cpus=workers, runtime_env=runtime_env(), log_to_driver=False
            )
            try:
                start = time.perf_counter()
                out = prepare(DataConfig(**base, executor="ray"), tmp / f"ray{workers}")
                t_ray = time.perf_counter() - start
            finally:
                ray.shutdown()
            same = out.stats["output"] == local.stats["output"]
            lines.append(
                f"whole stage, Ray x{workers} : {len(docs) / t_ray:10.0f} docs/s  "
                f"ray/local {t_local / t_ray:.2f}  same counts {same}"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=50_000)
    parser.add_argument("--near-share", type=float, default=0.05)
    parser.add_argument("--threshold", type=float, default=None)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--ray-docs", type=int, default=20_000)
    args = parser.parse_args()
    defaults = DataConfig(input="-", kind="text").dedup
    docs, planted = corpus(args.docs, args.near_share, args.seed)
    print(f"{len(docs)} dialogues, {len(planted)} planted near-duplicates")

    params = (args.threshold or defaults.threshold, defaults.ngram, defaults.num_perm)
    t_base, dropped_base = datasketch_baseline(docs, *params)
    t_ours, dropped_ours = ours(docs, *params)
    t_pipe = whole_pipeline(docs)
    recall_ours = len(dropped_ours & planted) / len(planted)
    recall_base = len(dropped_base & planted) / len(planted)
    print(f"whole clean pipeline : {len(docs) / t_pipe:10.0f} docs/s")
    print(
        f"near-dup dedup, ours : {len(docs) / t_ours:10.0f} docs/s  recall {recall_ours:.3f}  "
        f"dropped {len(dropped_ours)}"
    )
    print(
        f"datasketch directly  : {len(docs) / t_base:10.0f} docs/s  recall {recall_base:.3f}  "
        f"dropped {len(dropped_base)}"
    )
    print(
        f"dedup/datasketch {t_base / t_ours:.2f}  recall_ours {recall_ours:.3f}  "
        f"recall_datasketch {recall_base:.3f}"
    )
    if args.ray_docs:
        for line in stage_on_ray(docs[: args.ray_docs]):
            print(line)


if __name__ == "__main__":
    main()
