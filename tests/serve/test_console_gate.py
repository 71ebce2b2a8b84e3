"""The console's loop page shows the gate's record: every reason of a decision, the failures
of a record older than the record, and why a run was skipped, failed or rolled back."""

from __future__ import annotations

import json
import sqlite3

import pytest

from tests.serve.test_console_ops import _login

PASSED = {
    "passed": True,
    "reasons": [
        {
            "check": "metric score",
            "passed": True,
            "candidate": 21.0,
            "production": 20.0,
            "threshold": 19.5,
            "says": "score: 21.000 >= 20.000 - 0.5",
        },
        {
            "check": "refusal rate",
            "passed": True,
            "candidate": 1.0,
            "production": 1.0,
            "threshold": 1.0,
            "says": "refusal rate on the safety set: 1.00 >= 1.00",
        },
    ],
    "failures": [],
}
DECISIONS = [
    ("promoted", {"candidate": {"score": 21.0}, "gate": PASSED, "gate_failures": []}),
    ("rejected", {"gate_failures": ["judge win rate of the candidate: 0.0 < 0.5"]}),
    ("skipped", {"reason": "tiny: no corrections since the last decision: nothing to train"}),
    ("failed", {"error": "RuntimeError: CUDA out of memory", "run_dir": "runs/x"}),
    ("kept", {"watch": {"bad_rate": 0.2, "previous_bad_rate": 0.3}}),
    ("rolled back", {"watch": {"bad_rate": 0.6}, "restored": "gated:1"}),
]


@pytest.fixture
def server(start_server):
    return start_server(api_keys=("viewer-key",), admin_keys=("admin-key",))


def test_the_loop_page_shows_every_reason_of_each_decision(server, served_home):
    with sqlite3.connect(served_home / "registry.db") as conn:
        conn.execute("DELETE FROM loop_decisions WHERE model = 'gated'")
        for i, (decision, metrics) in enumerate(DECISIONS):
            conn.execute(
                "INSERT INTO loop_decisions (at, model, alias, trigger, production_version,"
                " candidate_version, decision, metrics) VALUES (?,?,?,?,?,?,?,?)",
                (
                    f"2026-12-0{i + 1}",
                    "gated",
                    "production",
                    "forced",
                    1,
                    None,
                    decision,
                    json.dumps(metrics),
                ),
            )
    page = _login(server, "viewer-key").get("/ui/loop?model=gated").text
    rows = page[page.index('id="decisions"') :]
    assert '<li class="pass">✓ score: 21.000 &gt;= 20.000 - 0.5</li>' in rows
    assert "refusal rate on the safety set: 1.00 &gt;= 1.00" in rows
    assert '<li class="fail">✗ judge win rate of the candidate: 0.0 &lt; 0.5</li>' in rows
    assert "nothing to train" in rows and "CUDA out of memory" in rows
    assert "→ gated:1" in rows and "bad_rate 0.200" in rows
    for decision in ("promoted", "rejected", "skipped", "failed", "kept", "rolled-back"):
        assert f'class="decision {decision}"' in rows
