"""The feedback loop's audit log (`loop_decisions`): every decision with the numbers that led
to it, append-only. `kollm loop` writes it and the web console reads it, so it lives here,
below both (the server may not import the pipeline)."""

from __future__ import annotations

import json
from contextlib import closing
from pathlib import Path
from typing import Any

from kollm.store import connect, open_store

# the watch's verdicts and runs that decided nothing: the next run still reads what they read
_NOT_A_READ = ("not triggered", "failed", "kept", "rolled back")


class LoopDecisions:
    def __init__(self, home: Path | str | None = None) -> None:
        _, self.path = open_store(home)

    def add(self, row: dict[str, Any]) -> None:
        """Append one decision: its `metrics` as a dict, the other columns as they are."""
        row = {**row, "metrics": json.dumps(row.get("metrics") or {})}
        columns, marks = ", ".join(row), ", ".join("?" * len(row))
        with closing(connect(self.path)) as conn:
            conn.execute(
                f"INSERT INTO loop_decisions ({columns}) VALUES ({marks})", tuple(row.values())
            )

    def rows(self, model: str | None = None, newest_first: bool = False) -> list[dict[str, Any]]:
        """Every decision (of `model`), oldest first, with `metrics` decoded."""
        query = "SELECT * FROM loop_decisions" + (" WHERE model = ?" if model else "")
        query += " ORDER BY id DESC" if newest_first else " ORDER BY id"
        with closing(connect(self.path)) as conn:
            found = conn.execute(query, (model,) if model else ()).fetchall()
        return [{**dict(r), "metrics": json.loads(r["metrics"] or "{}")} for r in found]

    def models(self) -> list[str]:
        """The models the loop decided for, sorted."""
        with closing(connect(self.path)) as conn:
            found = conn.execute("SELECT DISTINCT model FROM loop_decisions").fetchall()
        return sorted(r["model"] for r in found)

    def last_read(self, model: str) -> str | None:
        """When a decision for `model` last used the feedback it read (see `_NOT_A_READ`)."""
        marks = ", ".join("?" * len(_NOT_A_READ))
        with closing(connect(self.path)) as conn:
            row = conn.execute(
                f"SELECT MAX(at) FROM loop_decisions WHERE model = ? AND decision NOT IN ({marks})",
                (model, *_NOT_A_READ),
            ).fetchone()
        return row[0]

    def watch_verdicts(self, model: str, alias: str, version: int) -> list[str]:
        """In order: the promotions of `version` to `alias` and the watch's verdicts on it."""
        with closing(connect(self.path)) as conn:
            found = conn.execute(
                "SELECT decision FROM loop_decisions WHERE model = ? AND alias = ? AND"
                " ((decision = 'promoted' AND candidate_version = ?)"
                " OR (decision IN ('kept', 'rolled back') AND production_version = ?)) ORDER BY id",
                (model, alias, version, version),
            ).fetchall()
        return [r[0] for r in found]
