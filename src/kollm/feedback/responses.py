"""The request log (`responses` table): each answer the server gave, with the model version
that gave it and the PII masker applied to what is stored. Feedback rates these rows, so the
table lives with feedback (its SQL is in `kollm.feedback.store`, the table's owner); the server
writes it through `RequestLog`.

The log is bounded: a row keeps at most `max_kb` of the request's JSON and of the answer
(`request_bytes` and `response_bytes` hold the originals' sizes), and answers nobody rated are
deleted after `retention_days` (at start, then at most hourly, beside the writes). A rated
answer stays: feedback points at it, and the training export reads it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

from kollm.feedback.store import get_response, insert_response, prune_responses
from kollm.store import open_store, store_problem
from kollm.text.pii import mask_nested

log = logging.getLogger("kollm.feedback")

PRUNE_EVERY_S = 3600.0
_SHORTEST_CUT = 32  # characters a cut string keeps at least
_LONGEST_LIST = 64  # items a list keeps once a request is cut: its first and last halves


class RequestLog:
    """Appends to the `responses` table of the store under KOLLM_HOME (same migrations)."""

    def __init__(
        self, home: Path | str | None = None, max_kb: int = 64, retention_days: int = 30
    ) -> None:
        self.home, self.path = open_store(home)
        self.max_bytes, self.retention_days = max_kb * 1024, retention_days
        self.failure: str | None = None  # the last write's error, until a write succeeds
        self.pruning: threading.Thread | None = None  # the running background prune
        self._pruned_at = time.monotonic()
        if retention_days and store_problem(self.path) is None:
            self._prune_quietly()

    @property
    def problem(self) -> str | None:
        """Why answers are not being logged now (a read-only store, the last write's error)."""
        return store_problem(self.path) or self.failure

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
        """Log one answer; raises what the store raised (a full disk), and remembers it as
        `problem` until a write succeeds."""
        row = {
            "id": response_id,
            "created_at": _now().isoformat(timespec="milliseconds"),
            "endpoint": endpoint,
            "model": model,
            "model_version": model_version,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "finish_reason": finish_reason,
            "latency_ms": latency_ms,
            "rag": json.dumps(rag) if rag is not None else None,
        }
        try:
            self._insert({**row, **self._bounded(request, response_text)})
        except Exception as err:
            if str(err) != self.failure:  # say it once, not at every request
                log.warning("request log: writing %s failed: %s", response_id, err)
            self.failure = str(err)
            raise
        if self.failure is not None:
            log.warning("request log: writing again after: %s", self.failure)
            self.failure = None
        self._maybe_prune()

    def _bounded(self, request: dict[str, Any], text: str) -> dict[str, Any]:
        """The request and answer as a row keeps them: capped (before the PII mask, which is
        slow on a huge request), masked, and the originals' sizes."""
        # `_truncated` is the cut's own marker: a client's field of that name is not kept
        request = {k: v for k, v in request.items() if k != "_truncated"}
        size = _json_size(request)
        kept = mask_nested(cap_request(request, self.max_bytes, size))
        kept = cap_request(kept, self.max_bytes)  # a mask may lengthen a string
        return {
            "request": json.dumps(kept, ensure_ascii=False),
            "response": cap_text(mask_nested(cap_text(text, self.max_bytes)), self.max_bytes),
            "request_bytes": size,
            "response_bytes": len(text.encode("utf-8")),
        }

    def _insert(self, row: dict[str, Any]) -> None:
        insert_response(self.path, row)

    def get(self, response_id: str) -> dict[str, Any] | None:
        return get_response(self.path, response_id)

    def prune(self, now: dt.datetime | None = None) -> int:
        """Delete the answers older than `retention_days` that no feedback points at;
        returns how many. Nothing with retention 0."""
        if not self.retention_days:
            return 0
        cutoff = (now or _now()) - dt.timedelta(days=self.retention_days)
        return prune_responses(self.path, cutoff.isoformat(timespec="milliseconds"))

    def _prune_quietly(self) -> None:
        """Prune, best effort: a store that cannot delete now is pruned at a later turn."""
        try:
            deleted = self.prune()
        except Exception as err:
            log.warning("request log: retention could not delete old answers: %s", err)
            return
        if deleted:
            log.info(
                "request log: deleted %d answers older than %d days", deleted, self.retention_days
            )

    def _maybe_prune(self) -> None:
        """At most hourly, prune in a thread of its own: no request waits for it."""
        if not self.retention_days or time.monotonic() - self._pruned_at < PRUNE_EVERY_S:
            return
        if self.pruning is not None and self.pruning.is_alive():
            return
        self._pruned_at = time.monotonic()
        self.pruning = threading.Thread(target=self._prune_quietly, daemon=True)
        self.pruning.start()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _json_size(obj: Any) -> int:
    return len(json.dumps(obj, ensure_ascii=False).encode("utf-8"))


def cap_text(text: str, max_bytes: int) -> str:
    """`text` cut to `max_bytes` of UTF-8 (never inside a character)."""
    data = text.encode("utf-8")
    return text if len(data) <= max_bytes else data[:max_bytes].decode("utf-8", "ignore")


def cap_request(request: dict[str, Any], max_bytes: int, size: int | None = None) -> dict[str, Any]:
    """`request` when its JSON fits `max_bytes`, else a smaller request still in its shape:
    its first message and the latest that fit, then long strings cut in the middle, and
    `"_truncated": {"bytes": <the original's size>, "messages": <left out>, ...}`."""
    size = _json_size(request) if size is None else size
    if size <= max_bytes:
        return request
    out = dict(request)
    earlier = out.pop("_truncated", None)  # an earlier cut (before masking) keeps its size
    marker = {"bytes": size, **(earlier if isinstance(earlier, dict) else {})}
    dropped = _fit_messages(out, max_bytes)
    if dropped:
        marker["messages"] = marker.get("messages", 0) + dropped
    limit = max_bytes
    while _json_size({**out, "_truncated": marker}) > max_bytes and limit > _SHORTEST_CUT:
        limit //= 2
        out = _cut_strings(out, limit)
        marker["strings_cut_to"] = limit
    if _json_size({**out, "_truncated": marker}) > max_bytes:  # many fields: keep the talk
        out = _essentials(out)
        marker["fields"] = "only model, messages and prompt kept"
    if _json_size({**out, "_truncated": marker}) > max_bytes:  # deep structures: the model
        out = {"model": out["model"]} if isinstance(out.get("model"), str) else {}
        marker["fields"] = "too large to keep in any shape"
    return {**out, "_truncated": marker}


def _fit_messages(out: dict[str, Any], max_bytes: int) -> int:
    """Keep the first message and as many of the latest as fit; returns how many left out."""
    messages = out.get("messages")
    if not isinstance(messages, list) or len(messages) <= 2:
        return 0
    rest = _json_size({k: v for k, v in out.items() if k != "messages"})
    budget = max_bytes - rest - _json_size(messages[0]) - 64  # 64: the marker
    tail: list[Any] = []
    for message in reversed(messages[1:]):
        budget -= _json_size(message) + 2
        if tail and budget < 0:
            break
        tail.append(message)
    out["messages"] = [messages[0], *reversed(tail)]
    return len(messages) - len(out["messages"])


def _cut_strings(obj: Any, limit: int) -> Any:
    """Every string longer than `limit` characters as its head and tail around a cut, and
    every list longer than _LONGEST_LIST as its first and last items."""
    if isinstance(obj, str) and len(obj) > limit:
        half = limit // 2
        return f"{obj[:half]} … {obj[-half:]}"
    if isinstance(obj, dict):
        return {k: _cut_strings(v, limit) for k, v in obj.items()}
    if isinstance(obj, list):
        half = _LONGEST_LIST // 2
        items = obj if len(obj) <= _LONGEST_LIST else obj[:half] + obj[-half:]
        return [_cut_strings(v, limit) for v in items]
    return obj


def _essentials(out: dict[str, Any]) -> dict[str, Any]:
    """The fields an export reads, lists cut to their first and last item."""
    kept = {k: out[k] for k in ("model", "messages", "prompt") if k in out}
    for key in ("messages", "prompt"):
        if isinstance(kept.get(key), list) and len(kept[key]) > 2:
            kept[key] = [kept[key][0], kept[key][-1]]
    return _cut_strings(kept, _SHORTEST_CUT)
