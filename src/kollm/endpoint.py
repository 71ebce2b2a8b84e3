"""Calls to an OpenAI-compatible chat endpoint (kollm's own server, vLLM, a site gateway), as
the judge and the synthesis steps make them: bounded concurrency, retries with backoff
(tenacity) on 429, 5xx and connection errors, a timeout, and a cache in the shared store keyed
by the sha256 of everything that decides an answer (endpoint, model, parameters, seed,
messages). Each answer is stored the moment it arrives, so a run killed with `kill -9`
repeats on resume only the calls that were in flight, and a rerun reuses every answer."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kollm.store import connect, open_store

log = logging.getLogger("kollm.endpoint")


class EndpointError(RuntimeError):
    """The endpoint could not be reached or answered with an error; the message says which."""


@dataclass
class Endpoint:
    url: str  # base URL ending in /v1
    model: str
    api_key: str | None = None  # default: the env var `key_env`, then $OPENAI_API_KEY
    temperature: float = 0.0
    max_tokens: int = 512
    timeout_s: float = 120.0
    key_env: str = "KOLLM_ENDPOINT_API_KEY"

    def key(self) -> str | None:
        return self.api_key or os.environ.get(self.key_env) or os.environ.get("OPENAI_API_KEY")


class EndpointCache:
    """Answers keyed by the sha256 of what decides them (`endpoint_cache`, the store)."""

    def __init__(self, home: Path | str | None = None) -> None:
        _, self.path = open_store(home)
        self.hits = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> str | None:
        with closing(connect(self.path)) as conn:
            row = conn.execute(
                "SELECT response FROM endpoint_cache WHERE key = ?", (key,)
            ).fetchone()
        if row is not None:
            with self._lock:
                self.hits += 1
        return row[0] if row else None

    def put(self, key: str, model: str, response: str) -> None:
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        with closing(connect(self.path)) as conn, conn:
            conn.execute(
                "INSERT OR REPLACE INTO endpoint_cache VALUES (?, ?, ?, ?)",
                (key, model, response, now),
            )


class _Retryable(Exception):
    pass


@dataclass
class Usage:
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    by_step: dict[str, dict[str, int]] = field(default_factory=dict)


def _refused_param(reply) -> str | None:
    """The field a 400 in OpenAI's error shape names, if any."""
    if reply.status_code != 400:
        return None
    try:
        return (reply.json().get("error") or {}).get("param")
    except (ValueError, AttributeError):
        return None


class EndpointClient:
    def __init__(
        self,
        endpoint: Endpoint,
        cache: EndpointCache | None = None,
        concurrency: int = 4,
        retries: int = 3,
    ) -> None:
        self.endpoint, self.cache = endpoint, cache
        self.concurrency, self.retries = max(1, concurrency), max(1, retries)
        self.usage = Usage()
        self._lock = threading.Lock()
        self._http = None  # one pooled HTTP client, made at the first call
        # set when the endpoint refused `seed` (an engine that cannot repeat a sample, such as
        # kollm serve on CTranslate2): later calls go without it, and lineage says so
        self.seed_refused = False

    def _client(self):
        import httpx

        with self._lock:
            if self._http is None:
                limits = httpx.Limits(max_connections=self.concurrency)
                self._http = httpx.Client(timeout=self.endpoint.timeout_s, limits=limits)
        return self._http

    @property
    def calls(self) -> int:
        return self.usage.calls

    def _key(self, messages, seed: int, params: dict[str, Any]) -> str:
        e = self.endpoint
        content = [e.url, e.model, e.temperature, e.max_tokens, seed, params, messages]
        return hashlib.sha256(
            json.dumps(content, ensure_ascii=False, sort_keys=True).encode()
        ).hexdigest()

    def complete(
        self, messages: list[dict[str, str]], seed: int = 0, step: str = "", **params: Any
    ) -> str:
        """The answer to `messages` (cached); `params` (temperature, max_tokens ...) override
        the endpoint's for this call."""
        key = self._key(messages, seed, params)
        if self.cache is not None and (cached := self.cache.get(key)) is not None:
            return cached
        text = self._call(messages, seed, params, step)
        if self.cache is not None:
            self.cache.put(key, self.endpoint.model, text)
        return text

    def _count(self, step: str, body: dict) -> None:
        usage = body.get("usage") or {}
        with self._lock:
            self.usage.calls += 1
            self.usage.prompt_tokens += int(usage.get("prompt_tokens") or 0)
            self.usage.completion_tokens += int(usage.get("completion_tokens") or 0)
            per = self.usage.by_step.setdefault(step or "-", {"calls": 0, "tokens": 0})
            per["calls"] += 1
            per["tokens"] += int(usage.get("total_tokens") or 0)

    def _call(self, messages, seed: int, params: dict[str, Any], step: str) -> str:
        import httpx
        from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

        e = self.endpoint
        headers = {"Authorization": f"Bearer {e.key()}"} if e.key() else {}
        body = {
            "model": e.model,
            "messages": messages,
            "temperature": e.temperature,
            "max_tokens": e.max_tokens,
            "seed": seed,
            **params,
        }
        if self.seed_refused:
            body.pop("seed")

        @retry(
            stop=stop_after_attempt(self.retries),
            wait=wait_exponential(multiplier=0.5, max=8),
            retry=retry_if_exception_type((httpx.TransportError, _Retryable)),
            reraise=True,
        )
        def post() -> str:
            r = self._client().post(
                e.url.rstrip("/") + "/chat/completions", json=body, headers=headers
            )
            if r.status_code == 429 or r.status_code >= 500:
                raise _Retryable(f"{r.status_code}: {r.text[:200]}")
            if "seed" in body and _refused_param(r) == "seed":
                log.warning("%s cannot honour seed; asking without it from now on", e.url)
                self.seed_refused = True
                body.pop("seed")
                return post()
            if r.status_code != 200:
                raise EndpointError(f"{e.url} answered {r.status_code}: {r.text[:300]}")
            answer = r.json()
            self._count(step, answer)
            return answer["choices"][0]["message"]["content"] or ""

        try:
            return post()
        except (_Retryable, httpx.TransportError) as err:
            raise EndpointError(f"{e.url} failed after {self.retries} tries: {err}") from err

    def map(
        self,
        fn: Callable[[Any], Any],
        items: Iterable[Any],
        advance: Callable[[int], None] | None = None,
    ) -> list[Any]:
        """`fn` over `items`, `concurrency` at a time, results in order; `advance(1)` after
        each item (a progress bar)."""

        def counted(item: Any) -> Any:
            result = fn(item)
            if advance is not None:
                advance(1)
            return result

        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(counted, items))
