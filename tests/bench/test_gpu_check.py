"""bench/gpu_check.py --dry-run (issue 32): every step of the GPU check on tiny models on the
CPU, so the GPU's minutes go to measuring only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kollm.cluster.planner import ModelShape, PlanRequest, plan_on_cards

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_check.py"), "--dry-run", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text()


def test_every_configuration_trains_in_float32_on_the_cpu(report):
    doc, _ = report
    assert doc["device"] == "cpu" and doc["dry_run"] is True
    seen = {(r["shape"], r["seq_len"], r["checkpointing"]) for r in doc["runs"]}
    assert seen == {
        (shape, n, ckpt)
        for shape in ("qwen2.5-0.5b", "llama-3.2-1b")
        for n in doc["settings"]["seq_lens"]
        for ckpt in (True, False)
    }
    for run in doc["runs"]:
        measured = run["measured"]
        assert "error" not in measured, measured
        assert measured["weights_dtype"] == "float32"
        assert measured["log"].endswith("on cpu, fp32")  # the training log says which
        assert measured["tokens_per_s"] > 0 and measured["step_s"] > 0
        # every example fills the sequence: the planner's context is what trained
        assert measured["tokens_per_step"] >= 0.9 * run["batch"] * run["seq_len"]
    assert doc["checks"]["dtype"] is True


def test_the_plan_beside_each_run_is_what_kollm_plan_computes(report):
    doc, table = report
    for run in doc["runs"]:
        plan = run["plan"]
        assert plan["command"].startswith("kollm plan MODEL_DIR --task lora --precision bf16")
        shape = ModelShape.from_config(doc["models"][run["shape"]])
        again, _, _ = plan_on_cards(shape, PlanRequest(**plan["request"]))
        assert again.total_gib == pytest.approx(plan["total_gib"])
        assert plan["total_gib"] > 0
    # on the CPU the peak is one process's RSS: no ratio is claimed
    assert "ratio_reserved" not in doc["runs"][0]
    assert doc["checks"]["planner_within_15pct"].startswith("not comparable")
    assert "not comparable" in table


def test_generation_and_qlora_are_reported(report):
    doc, table = report
    assert set(doc["generation"]) == {"qwen2.5-0.5b", "llama-3.2-1b"}
    for figures in doc["generation"].values():
        assert figures["batch_1"]["tokens_per_s"] > 0
        assert figures["batch_16"]["tokens_per_s"] > 0
    assert doc["qlora"].startswith("skipped: ")
    assert "QLoRA: skipped" in table
