"""A person's pick of the best of several candidate answers: synthesis's preference prompts
the judge could not settle (`pending_review.jsonl`, each with its `answers` and their `wins`).

Each pick is recorded in the store (`candidate_picks`); after every pick the file's reviewed
pairs are written beside it as `reviewed_pairs.jsonl` (prompt, chosen = the pick, rejected =
the other answer the judge ranked lowest), in the same shape as the judged pairs, so a DPO
recipe names it as its train file."""

from __future__ import annotations

import datetime as dt
import hashlib
from contextlib import closing
from pathlib import Path
from typing import Any

from kollm.data.io import read_rows, write_jsonl
from kollm.store import connect, open_store

PAIRS_FILE = "reviewed_pairs.jsonl"


class PickError(ValueError):
    """A pick that cannot be recorded; the message names the item or the answer."""


def prompt_sha(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


class CandidatePicks:
    def __init__(self, home: Path | str | None = None) -> None:
        self.home, self.db = open_store(home)

    def items(self, path: Path) -> list[dict[str, Any]]:
        """The file's prompts, each with its sha256 and its latest pick (None when unpicked)."""
        picks = self._latest(path)
        rows = []
        for _line, row in read_rows(path):
            sha = prompt_sha(str(row.get("prompt", "")))
            picked, by = picks.get(sha, (None, None))
            rows.append({**row, "sha": sha, "picked": picked, "picked_by": by})
        return rows

    def pick(self, path: Path, sha: str, picked: int, reviewer: str) -> Path:
        """Record `reviewer`'s pick of answer `picked` for the prompt with sha256 `sha`, and
        rewrite the file's reviewed pairs; returns that file."""
        item = next((r for r in self.items(path) if r["sha"] == sha), None)
        if item is None:
            raise PickError(f"{path}: no prompt with sha256 {sha[:12]}")
        if not 0 <= picked < len(item.get("answers") or []):
            raise PickError(f"{path}: answer {picked} does not exist for that prompt")
        with closing(connect(self.db)) as conn, conn:
            conn.execute(
                "INSERT INTO candidate_picks (file, prompt_sha256, picked, reviewer, created_at)"
                " VALUES (?,?,?,?,?)",
                (str(path.resolve()), sha, picked, reviewer, _now()),
            )
        return self.write_pairs(path)

    def write_pairs(self, path: Path) -> Path:
        pairs = [_pair(r) for r in self.items(path) if r["picked"] is not None]
        out = path.parent / PAIRS_FILE
        write_jsonl(out, pairs)
        return out

    def _latest(self, path: Path) -> dict[str, tuple[int, str]]:
        with closing(connect(self.db)) as conn:
            rows = conn.execute(
                "SELECT prompt_sha256, picked, reviewer FROM candidate_picks WHERE file = ?"
                " ORDER BY id",
                (str(path.resolve()),),
            ).fetchall()
        return {sha: (picked, reviewer) for sha, picked, reviewer in rows}


def _pair(item: dict[str, Any]) -> dict[str, Any]:
    answers, picked = item["answers"], item["picked"]
    wins = list(item.get("wins") or [0] * len(answers))
    models = list(item.get("models") or [None] * len(answers))
    others = [i for i in range(len(answers)) if i != picked]
    worst = min(others, key=lambda i: (wins[i], i))
    return {
        "prompt": item["prompt"],
        "chosen": answers[picked],
        "rejected": answers[worst],
        "chosen_model": models[picked],
        "rejected_model": models[worst],
        "review": "picked",
        "reviewer": item["picked_by"],
    }


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
