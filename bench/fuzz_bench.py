"""Hostile requests against `kollm serve`: schemathesis generates schema-valid and
schema-breaking requests for every operation of the server's own OpenAPI schema (the API and
the console), positive and negative, and counts the answers by status class. Goal: 0 answers
>= 500, no dropped connection, the server still up.

Beside the counts, `/health` is timed from another thread all through the run; the baseline
in the same run is `/health` on the idle server, so `health/idle` is what the fuzzing costs
a load balancer's probe.

    .venv/bin/python bench/fuzz_bench.py [--examples 25]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

REPO = Path(__file__).resolve().parents[1]
KEY = "fuzz-bench-key"
SKIP = ("/ui/jobs/{job_id}/log",)  # an SSE stream that runs until its job ends


def build_model(out: Path) -> None:
    """A 2-layer Llama with a BPE trained on the bundled dialogues (random weights: the
    answers do not matter here, the server's handling of the requests does)."""
    from kollm.config import ModelConfig
    from kollm.train.scratch import build_model as build
    from kollm.train.scratch import train_tokenizer

    rows = [json.loads(line) for line in (REPO / "data/sample/dialogsum_dev.jsonl").open()]
    tok = train_tokenizer((r["dialogue"] + r["summary"] for r in rows), 2000, out)
    build(ModelConfig(vocab_size=2000, max_positions=512), tok, seed=0).save_pretrained(out)


def start(model: Path, home: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    keys = home / "keys.txt"
    keys.write_text(f"{KEY} admin bench\n")
    keys.chmod(0o600)
    command = [str(Path(sys.executable).parent / "kollm"), "serve", str(model)]
    command += ["--port", str(port), "--api-key-file", str(keys), "--timeout", "30"]
    env = {**os.environ, "KOLLM_HOME": str(home)}
    log = open(home / "serve.log", "wb")  # noqa: SIM115 - the server's lifetime
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            break
        time.sleep(0.2)
    sys.exit(f"kollm serve did not start:\n{(home / 'serve.log').read_text()[-2000:]}")


class HealthProbe(threading.Thread):
    """GET /health every 50 ms until stopped; the latencies in ms."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.times, self.failed = url, [], 0
        self.stopped = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=10) as http:
            while not self.stopped.is_set():
                began = time.perf_counter()
                try:
                    ok = http.get(self.url + "/health").status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.times.append((time.perf_counter() - began) * 1000)
                self.failed += not ok
                time.sleep(0.05)


def fuzz(url: str, examples: int, model: str, key: str = KEY) -> tuple[Counter, list[str], set]:
    """Every operation of the server's schema, `examples` requests each in both modes: the
    answers by status class, the 5xx and dropped connections, and the operations answered.
    tests/serve/test_fuzz.py runs this too."""
    auth = {"Authorization": f"Bearer {key}"}
    schema = schemathesis.openapi.from_url(url + "/openapi.json", headers=auth)
    statuses: Counter = Counter()
    bad: list[str] = []
    reached: set[str] = set()
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path in SKIP:
            continue
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            before = sum(statuses.values())
            one_operation(operation, mode, (url, auth, model), examples, statuses, bad)
            if sum(statuses.values()) > before:
                reached.add(operation.label)
    return statuses, bad, reached


def one_operation(operation, mode, target, examples, statuses, bad) -> None:
    url, auth, model = target

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case):
        if isinstance(case.body, dict) and isinstance(case.body.get("model"), str):
            case.body["model"] = model
        try:
            response = case.call(base_url=url, headers=auth, timeout=60)
        except Exception as err:
            statuses["dropped"] += 1
            bad.append(f"{operation.label}: {type(err).__name__}")
            return
        statuses[f"{response.status_code // 100}xx"] += 1
        if response.status_code >= 500:
            bad.append(f"{operation.label}: {response.status_code} {response.text[:200]}")

    with contextlib.suppress(Unsatisfiable):  # an operation without parameters has nothing to break
        run()


def server_errors(log: Path) -> Counter:
    """The last line of each traceback in the server's log (the causes of the 5xx), counted."""
    causes: Counter = Counter()
    lines = log.read_text(errors="replace").splitlines()
    for i, line in enumerate(lines):
        if line.startswith("Traceback"):
            end = next((j for j in range(i + 1, len(lines)) if not lines[j][:1].isspace()), i)
            causes[lines[end][:200]] += 1
    return causes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=25, help="per operation and mode")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "fuzz-model"
        build_model(model)
        process, url = start(model, Path(tmp))
        try:
            idle = HealthProbe(url)
            idle.start()
            time.sleep(3)
            idle.stopped.set()
            idle.join()
            probe = HealthProbe(url)
            probe.start()
            began = time.perf_counter()
            statuses, bad, _ = fuzz(url, args.examples, model.name)
            wall = time.perf_counter() - began
            probe.stopped.set()
            probe.join()
            alive = process.poll() is None
            causes = server_errors(Path(tmp) / "serve.log")
        finally:
            process.terminate()
            process.wait(30)
    total = sum(statuses.values())
    print(
        f"requests {total} in {wall:.0f} s: "
        + "  ".join(f"{k} {v}" for k, v in sorted(statuses.items()))
    )
    for line in bad[:20]:
        print("  " + line)
    for cause, count in causes.most_common(10):
        print(f"  server log: {count} x {cause}")
    p99 = statistics.quantiles(probe.times, n=100)[98]
    base = statistics.quantiles(idle.times, n=100)[98]
    print(f"/health p99 {p99:.1f} ms under fuzzing, {base:.1f} ms idle, {probe.failed} failed")
    print(
        f"5xx {statuses['5xx']}  dropped {statuses['dropped']}  server_up {int(alive)}  "
        f"health/idle {p99 / base:.2f}"
    )


if __name__ == "__main__":
    main()
