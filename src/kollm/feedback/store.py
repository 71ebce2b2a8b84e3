"""The feedback store: ratings of logged answers, in the same SQLite store and migrations. It
owns the request log's table (`responses`) too: a rating checks and joins the answer it rates.

A rating is `good`/`bad` or 1-5 (4-5 count as good); categories come from a public-sector
service plan. An unknown response id or category is refused with a message naming it.
A rating posted through the API records the key's name (never the key), and a key that posted
its hourly allowance is refused with the seconds until a slot frees (FeedbackLimitError).
Writes hold the database lock from their start (`BEGIN IMMEDIATE`), so several server workers
and CLI processes can add feedback at once without losing any.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kollm.store import connect, open_store
from kollm.text.pii import mask_pii

CATEGORIES = ("hallucination", "harmful", "biased", "evasive", "off-domain", "other")


class FeedbackError(ValueError):
    """Feedback that cannot be stored; the message names the field or the unknown value."""

    def __init__(self, message: str, field: str, status: int = 400) -> None:
        super().__init__(message)
        self.field, self.status = field, status


class FeedbackLimitError(FeedbackError):
    """A key posted its hourly allowance; `retry_after_s`: when its oldest counted rating ages
    out of the hour."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message, "response_id", 429)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class Rating:
    label: str  # "good", "bad", or "1".."5"
    score: int  # 1..5; good is 5 and bad is 1
    is_good: bool


def parse_rating(value: str | int) -> Rating:
    """`good`/`bad` or 1-5 as a Rating; anything else names the field."""
    if isinstance(value, str) and value.lower() in ("good", "bad"):
        good = value.lower() == "good"
        return Rating(value.lower(), 5 if good else 1, good)
    try:
        score = int(value)
    except (TypeError, ValueError):
        raise FeedbackError(
            f"rating: expected 'good', 'bad' or 1-5, got {value!r}", "rating"
        ) from None
    if not 1 <= score <= 5 or isinstance(value, bool):
        raise FeedbackError(f"rating: expected 'good', 'bad' or 1-5, got {value!r}", "rating")
    return Rating(str(score), score, score >= 4)


class FeedbackStore:
    def __init__(self, home: Path | str | None = None) -> None:
        _, self.path = open_store(home)

    def _connect(self) -> sqlite3.Connection:
        return connect(self.path)

    def add(
        self,
        response_id: str,
        rating: str | int,
        categories: list[str] | None = None,
        comment: str | None = None,
        correction: str | None = None,
        source: str = "api",
        key_name: str | None = None,
        per_hour: int = 0,
    ) -> dict[str, Any]:
        """Store one rating; returns it with the response's model and version. `key_name`
        names who posted it; with `per_hour`, a key's rating beyond that many in the last hour
        is refused (FeedbackLimitError), counted inside the write lock so several server
        workers share one count."""
        parsed = parse_rating(rating)
        unknown = [c for c in categories or [] if c not in CATEGORIES]
        if unknown:
            raise FeedbackError(
                f"categories: unknown {unknown}; use {', '.join(CATEGORIES)}", "categories"
            )
        now = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
        # masked before the write lock: masking a long text takes a while, and every other
        # writer of the store (the request log among them) would wait on it
        comment, correction = _mask(comment), _mask(correction)
        with closing(self._connect()) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                if per_hour and key_name is not None:
                    _check_allowance(conn, key_name, per_hour)
                response = conn.execute(
                    "SELECT model, model_version FROM responses WHERE id = ?", (response_id,)
                ).fetchone()
                if response is None:
                    raise FeedbackError(
                        f"response_id: no logged response '{response_id}'", "response_id", 404
                    )
                cursor = conn.execute(
                    "INSERT INTO feedback (response_id, created_at, rating, score, is_good,"
                    " categories, comment, correction, source, key_name)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (
                        response_id,
                        now,
                        parsed.label,
                        parsed.score,
                        int(parsed.is_good),
                        json.dumps(sorted(set(categories or []))),
                        comment,
                        correction,
                        source,
                        key_name,
                    ),
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return {
            "id": cursor.lastrowid,
            "response_id": response_id,
            "model": response["model"],
            "model_version": response["model_version"],
            "rating": parsed.label,
            "created_at": now,
        }

    def review(
        self, feedback_id: int, reviewer: str, categories: list[str], correction: str | None
    ) -> None:
        """A reviewer's categories and correction for a rating (the export takes the latest)."""
        unknown = [c for c in categories if c not in CATEGORIES]
        if unknown:
            raise FeedbackError(f"categories: unknown {unknown}", "categories")
        now = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
        with closing(self._connect()) as conn, conn:
            if (
                conn.execute("SELECT 1 FROM feedback WHERE id = ?", (feedback_id,)).fetchone()
                is None
            ):
                raise FeedbackError(f"feedback_id: no rating {feedback_id}", "feedback_id", 404)
            conn.execute(
                "INSERT INTO feedback_reviews (feedback_id, reviewer, categories, correction,"
                " created_at) VALUES (?,?,?,?,?)",
                (
                    feedback_id,
                    reviewer,
                    json.dumps(sorted(set(categories))),
                    _mask(correction.strip()) if correction and correction.strip() else None,
                    now,
                ),
            )

    def reviewer_agreement(self) -> dict[str, Any]:
        """Items two or more reviewers labelled, and the share where their categories agree
        (each reviewer's latest verdict)."""
        with closing(self._connect()) as conn:
            rows = conn.execute(
                "SELECT feedback_id, reviewer, categories FROM feedback_reviews ORDER BY id"
            ).fetchall()
        latest: dict[int, dict[str, str]] = {}
        for r in rows:
            latest.setdefault(r["feedback_id"], {})[r["reviewer"]] = r["categories"]
        shared = [set(v.values()) for v in latest.values() if len(v) >= 2]
        agreed = sum(len(s) == 1 for s in shared)
        return {
            "items": len(shared),
            "agreed": agreed,
            "rate": round(agreed / len(shared), 4) if shared else None,
        }

    def rows(self, model: str | None = None, since: str | None = None) -> list[dict[str, Any]]:
        """Feedback joined with the answers it rates, oldest first; a reviewed rating carries
        its latest review's categories and correction (`reviewed_by` names the reviewer,
        `reviewed_at` says when, and `reviewed_correction` is the reviewer's correction alone:
        None when the reviewer cleared it)."""
        query = (
            "SELECT f.*, r.model, r.model_version, r.request, r.response, r.endpoint, r.rag,"
            " v.reviewer AS reviewed_by, v.created_at AS reviewed_at,"
            " v.categories AS review_categories, v.correction AS review_correction"
            " FROM feedback f JOIN responses r ON r.id = f.response_id"
            " LEFT JOIN feedback_reviews v ON v.id ="
            " (SELECT MAX(id) FROM feedback_reviews WHERE feedback_id = f.id) WHERE 1=1"
        )
        args: list[Any] = []
        if model:
            query += " AND r.model = ?"
            args.append(model)
        if since:
            query += " AND f.created_at >= ?"
            args.append(since)
        with closing(self._connect()) as conn:
            found = conn.execute(query + " ORDER BY f.id", args).fetchall()
        return [_reviewed(dict(row)) for row in found]


_PRUNE_BATCH = 1000  # rows per delete: a prune never holds the write lock for long


def insert_response(path: Path, row: dict[str, Any]) -> None:
    """Log one answer (`responses`: the request log's table, written by `RequestLog`)."""
    columns, marks = ", ".join(row), ", ".join("?" * len(row))
    with closing(connect(path)) as conn:
        conn.execute(f"INSERT INTO responses ({columns}) VALUES ({marks})", tuple(row.values()))


def get_response(path: Path, response_id: str) -> dict[str, Any] | None:
    with closing(connect(path)) as conn:
        row = conn.execute("SELECT * FROM responses WHERE id = ?", (response_id,)).fetchone()
    return dict(row) if row else None


def prune_responses(path: Path, before: str) -> int:
    """Delete the answers logged before `before` that no rating points at, a batch at a
    time; returns how many."""
    deleted = 0
    with closing(connect(path)) as conn:
        while True:
            gone = conn.execute(
                "DELETE FROM responses WHERE id IN (SELECT r.id FROM responses r"
                " WHERE r.created_at < ? AND NOT EXISTS"
                " (SELECT 1 FROM feedback f WHERE f.response_id = r.id) LIMIT ?)",
                (before, _PRUNE_BATCH),
            ).rowcount
            deleted += gone
            if gone < _PRUNE_BATCH:
                return deleted


def _reviewed(row: dict[str, Any]) -> dict[str, Any]:
    row["categories"] = json.loads(row["categories"])
    row["reviewed_correction"] = row.get("review_correction")
    if row.get("reviewed_by"):
        row["original_categories"] = row["categories"]
        row["categories"] = json.loads(row["review_categories"])
        if row.get("review_correction"):
            row["correction"] = row["review_correction"]
    for key in ("review_categories", "review_correction"):
        row.pop(key, None)
    return row


def _check_allowance(conn: sqlite3.Connection, key_name: str, per_hour: int) -> None:
    """FeedbackLimitError when `key_name` posted `per_hour` ratings in the last hour."""
    now = dt.datetime.now(dt.UTC)
    start = (now - dt.timedelta(hours=1)).isoformat(timespec="milliseconds")
    counted = conn.execute(
        "SELECT created_at FROM feedback WHERE key_name = ? AND created_at >= ?"
        " ORDER BY created_at DESC LIMIT ?",
        (key_name, start, per_hour),
    ).fetchall()
    if len(counted) < per_hour:
        return
    # a slot frees when the oldest of the newest `per_hour` ratings leaves the hour
    frees = dt.datetime.fromisoformat(counted[-1][0]) + dt.timedelta(hours=1)
    wait = max(1, math.ceil((frees - now).total_seconds()))
    raise FeedbackLimitError(
        f"key {key_name!r} posted {per_hour} ratings in the last hour"
        f" (serve.feedback_per_key_per_hour); retry in {wait} s",
        wait,
    )


def _mask(text: str | None) -> str | None:
    return mask_pii(text).text if text else text
