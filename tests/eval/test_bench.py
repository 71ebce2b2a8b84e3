"""Benchmarks through lm-eval against our own server: the bundled Korean multiple-choice
task scores the same through `/v1/completions` as lm-eval's in-process `hf` backend on the
same weights, and the result is recorded on the registry version. lm-eval runs in its own
processes here, as from the command line (in the test process it would hold pytest's
captured streams)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kollm.registry import Registry

pytest.importorskip("lm_eval")

HF_REFERENCE = """
import json, sys, tempfile
from pathlib import Path
from kollm.eval.bench import bundled_task_dir, run_tasks
from kollm.pipeline.bench import _bundled_data
tmp = Path(tempfile.mkdtemp())
tasks = bundled_task_dir(_bundled_data(tmp), tmp / "tasks")
args = {"pretrained": sys.argv[1], "device": "cpu"}
out = run_tasks("hf", args, ["kollm_ko_mc"], [tasks], limit=int(sys.argv[2]))
print(json.dumps(out["kollm_ko_mc"]))
"""


def _run(args, home):
    env = {
        **os.environ,
        "KOLLM_HOME": str(home),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)


def _bench(home, *args):
    """`kollm eval bench tiny@production ARGS` in its own process."""
    command = [sys.executable, "-m", "kollm", "eval", "bench", "tiny@production", *args]
    return _run(command, home)


def test_accuracy_through_the_server_equals_lm_evals_own_backend(served_home):
    limit = "24"  # questions of the bundled task, the same ones on both sides
    out = _bench(served_home, "--engine", "transformers", "--limit", limit, "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    served = json.loads(out.stdout.strip().splitlines()[-1])["kollm_ko_mc"]
    model_dir = Registry(served_home).get("tiny@production").artifact_path
    ref = _run([sys.executable, "-c", HF_REFERENCE, model_dir, limit], served_home)
    assert ref.returncode == 0, ref.stderr[-2000:]
    local = json.loads(ref.stdout.strip().splitlines()[-1])
    assert abs(served["acc,none"] - local["acc,none"]) * 100 <= 0.5
    assert served["acc,none"] == pytest.approx(local["acc,none"])
    (recorded,) = Registry(served_home).evaluations("tiny@production")[-1:]
    assert recorded["kind"] == "lm-eval"
    assert recorded["metrics"]["tasks"]["kollm_ko_mc"]["acc,none"] == served["acc,none"]


def test_an_unknown_task_is_named(served_home):
    out = _bench(served_home, "--tasks", "nope_x")
    assert out.returncode == 2 and "nope_x" in out.stderr


def test_generation_through_chat_scores_what_the_server_answers(served_home, start_server):
    import httpx
    import sacrebleu

    from tests.conftest import read_jsonl

    out = _bench(
        served_home,
        "--tasks",
        "kollm_ko_gen",
        "--chat",
        "--engine",
        "transformers",
        "--limit",
        "6",
        "--json",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    chrf = json.loads(out.stdout.strip().splitlines()[-1])["kollm_ko_gen"]["chrf,none"]
    server = start_server(engine="transformers")
    rows = read_jsonl(Path(__file__).resolve().parents[2] / "data/sample/bench_ko_mc.jsonl")[:6]
    answers = []
    for row in rows:
        body = {
            "model": "tiny",
            "max_tokens": 16,
            "temperature": 0,
            "stop": ["\n"],
            "seed": 1234,
            "messages": [{"role": "user", "content": f"질문: {row['question']}\n답:"}],
        }
        r = httpx.post(server.base_url + "/v1/chat/completions", json=body, timeout=60).json()
        answers.append(r["choices"][0]["message"]["content"])
    refs = [[row["choices"][row["answer"]] for row in rows]]
    assert chrf == pytest.approx(sacrebleu.corpus_chrf(answers, refs).score, abs=1e-6)
    recorded = Registry(served_home).evaluations("tiny@production")[-1]
    assert recorded["metrics"]["api"] == "chat"
