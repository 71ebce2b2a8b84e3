"""The feedback store: ratings of logged answers, in the same SQLite store and migrations.

A rating is `good`/`bad` or 1-5 (4-5 count as good); categories come from a public-sector
service plan. An unknown response id or category is refused with a message naming it.
Writes hold the database lock from their start (`BEGIN IMMEDIATE`), so several server workers
and CLI processes can add feedback at once without losing any.
"""

from __future__ import annotations

import datetime as dt
import json
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
    ) -> dict[str, Any]:
        """Store one rating; returns it with the response's model and version."""
        parsed = parse_rating(rating)
        unknown = [c for c in categories or [] if c not in CATEGORIES]
        if unknown:
            raise FeedbackError(
                f"categories: unknown {unknown}; use {', '.join(CATEGORIES)}", "categories"
            )
        now = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
        with closing(self._connect()) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                response = conn.execute(
                    "SELECT model, model_version FROM responses WHERE id = ?", (response_id,)
                ).fetchone()
                if response is None:
                    raise FeedbackError(
                        f"response_id: no logged response '{response_id}'", "response_id", 404
                    )
                cursor = conn.execute(
                    "INSERT INTO feedback (response_id, created_at, rating, score, is_good,"
                    " categories, comment, correction, source) VALUES (?,?,?,?,?,?,?,?,?)",
                    (
                        response_id,
                        now,
                        parsed.label,
                        parsed.score,
                        int(parsed.is_good),
                        json.dumps(sorted(set(categories or []))),
                        _mask(comment),
                        _mask(correction),
                        source,
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

    def rows(self, model: str | None = None, since: str | None = None) -> list[dict[str, Any]]:
        """Feedback joined with the answers it rates, oldest first."""
        query = (
            "SELECT f.*, r.model, r.model_version, r.request, r.response, r.endpoint, r.rag"
            " FROM feedback f JOIN responses r ON r.id = f.response_id WHERE 1=1"
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
        return [{**dict(row), "categories": json.loads(row["categories"])} for row in found]


def _mask(text: str | None) -> str | None:
    return mask_pii(text).text if text else text
