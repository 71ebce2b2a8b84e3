"""Console page times, one run: a store filled with 500 recipe runs and 10,000 rated answers,
then the runs list and the feedback queue rendered through the app (each the median of 5);
goal: each under 1 s on 2 cores. The baseline in the same run is the same pages over an
empty store, so the ratio shows what the volume costs.

    .venv/bin/python bench/console_bench.py [--runs 500] [--items 10000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from fastapi.testclient import TestClient

from kollm.feedback.responses import RequestLog
from kollm.feedback.store import FeedbackStore
from kollm.registry import Registry
from kollm.serve.app import create_app
from kollm.serve.deps import ServeSettings
from kollm.serve.metrics import ServerMetrics
from kollm.serve.service import ModelManager


def fill(home: Path, runs: Path, n_runs: int, n_items: int) -> None:
    for i in range(n_runs):
        for stage, summary in (("data", {"kept": 1000 + i}), ("eval", {"score": 50 + i % 9})):
            out = runs / f"run-{i:04d}" / stage
            out.mkdir(parents=True, exist_ok=True)
            (out / "stage.json").write_text(json.dumps({"summary": summary}))
        (runs / f"run-{i:04d}" / "eval" / "metrics.json").write_text(
            json.dumps({"model": {"score": 50.0 + i % 9, "rouge1": 0.5}})
        )
    log, store = RequestLog(home), FeedbackStore(home)
    for i in range(n_items):
        request = {"model": "m", "messages": [{"role": "user", "content": f"질문 {i}입니다"}]}
        log.write(f"r{i}", "chat", "m", "m:1", request, f"답변 {i}", 3, 3, "stop", 1.0)
        store.add(f"r{i}", "bad" if i % 3 else "good", ["hallucination"] if i % 3 else [])


def timed(client: TestClient, path: str) -> float:
    times = []
    for _ in range(5):
        started = time.perf_counter()
        assert client.get(path).status_code == 200
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def pages(home: Path, runs: Path) -> dict[str, float]:
    manager = ModelManager([], "ctranslate2", ServerMetrics(), registry=Registry(home))
    app = create_app(manager, ServeSettings(runs_dir=runs), RequestLog(home))
    with TestClient(app) as client:
        return {p: timed(client, p) for p in ("/ui/runs", "/ui/feedback")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--items", type=int, default=10000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        empty = pages(Path(tmp) / "empty", Path(tmp) / "no-runs")
        home, runs = Path(tmp) / "home", Path(tmp) / "runs"
        fill(home, runs, args.runs, args.items)
        full = pages(home, runs)
    print(f"{args.runs} runs, {args.items} rated answers")
    for path in full:
        ms, base = full[path] * 1000, empty[path] * 1000
        print(f"  {path:14} {ms:7.1f} ms (empty store {base:5.1f} ms; goal < 1000 ms)")
    worst = max(full.values())
    print(f"ratio full/empty {worst / max(empty.values()):.1f}  slowest_ms {worst * 1000:.0f}")
    return 0 if worst < 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
