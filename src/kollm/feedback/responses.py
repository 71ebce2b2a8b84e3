"""The request log (`responses` table): each answer the server gave, with the model version
that gave it and the PII masker applied to what is stored. Feedback rates these rows, so the
table lives with feedback; the server writes it through `RequestLog`."""

from __future__ import annotations

import datetime as dt
import json
from contextlib import closing
from pathlib import Path
from typing import Any

from kollm.store import connect, open_store
from kollm.text.pii import mask_nested


class RequestLog:
    """Appends to the `responses` table of the store under KOLLM_HOME (same migrations)."""

    def __init__(self, home: Path | str | None = None) -> None:
        self.home, self.path = open_store(home)

    def write(
        self,
        response_id: str,
        endpoint: str,
        model: str,
        model_version: str,
        request: dict[str, Any],
        response_text: str,
        prompt_tokens: int,
        completion_tokens: int,
        finish_reason: str,
        latency_ms: float,
        rag: dict[str, Any] | None = None,
    ) -> None:
        row = (
            response_id,
            dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
            endpoint,
            model,
            model_version,
            json.dumps(mask_nested(request), ensure_ascii=False),
            mask_nested(response_text),
            prompt_tokens,
            completion_tokens,
            finish_reason,
            latency_ms,
            json.dumps(rag) if rag is not None else None,
        )
        with closing(connect(self.path)) as conn:
            conn.execute("INSERT INTO responses VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", row)

    def get(self, response_id: str) -> dict[str, Any] | None:
        with closing(connect(self.path)) as conn:
            row = conn.execute("SELECT * FROM responses WHERE id = ?", (response_id,)).fetchone()
        return dict(row) if row else None
