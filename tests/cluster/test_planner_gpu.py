"""The planner against memory measured on a card: every JSON bench/gpu_check.py wrote on a GPU
and that is committed under tests/fixtures/gpu/ (issue 32)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kollm.cluster.planner import ModelShape, PlanRequest, plan_on_cards

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "gpu"
MEASURED = sorted(FIXTURES.glob("*.json"))


def measured_runs() -> list[tuple[str, dict, dict]]:
    """(label, model config, run) of every GPU run with a reserved-memory peak."""
    found = []
    for path in MEASURED:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("device") != "cuda":
            continue
        for run in doc["runs"] + (doc["qlora"] if isinstance(doc["qlora"], list) else []):
            if run["measured"].get("max_reserved_gib"):
                label = f"{path.stem}:{run['shape']}@{run['seq_len']}:{run['task']}"
                found.append(
                    (f"{label}:ckpt={run['checkpointing']}", doc["models"][run["shape"]], run)
                )
    return found


@pytest.mark.skipif(
    not measured_runs(),
    reason="issue 32: no GPU measurement committed under tests/fixtures/gpu/ yet "
    "(run bench/gpu_check.py on a GPU and commit its gpu_check.json there)",
)
@pytest.mark.parametrize(("label", "config", "run"), measured_runs() or [("none", {}, {})])
def test_planner_within_15_percent_of_the_card(label, config, run):
    planned, _, _ = plan_on_cards(
        ModelShape.from_config(config), PlanRequest(**run["plan"]["request"])
    )
    reserved = run["measured"]["max_reserved_gib"]
    assert abs(planned.total_gib / reserved - 1) <= 0.15, (
        f"{label}: planned {planned.total_gib:.2f} GiB, the card reserved {reserved:.2f} GiB"
    )
