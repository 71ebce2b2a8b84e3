"""Prometheus metrics with vLLM-style names, each labelled by model.

Every server gets its own CollectorRegistry, so several apps in one process (tests) do not
collide.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_TOKEN_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1, 2.5)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        label = ["model_name"]
        r = self.registry
        self.ttft = Histogram(
            "kollm:time_to_first_token_seconds",
            "Time to first token.",
            label,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "kollm:inter_token_latency_seconds",
            "Time between streamed tokens.",
            label,
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "kollm:e2e_request_latency_seconds",
            "Request latency, end to end.",
            label,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_time = Histogram(
            "kollm:request_queue_time_seconds",
            "Time waiting in the queue.",
            label,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "kollm:batch_size",
            "Requests in each engine batch.",
            label,
            buckets=(1, 2, 4, 8, 12, 16, 24, 32, 64),
            registry=r,
        )
        self.running = Gauge(
            "kollm:num_requests_running", "Requests in an engine batch.", label, registry=r
        )
        self.waiting = Gauge(
            "kollm:num_requests_waiting", "Requests waiting in the queue.", label, registry=r
        )
        self.prompt_tokens = Counter(
            "kollm:prompt_tokens", "Prompt tokens processed.", label, registry=r
        )
        self.generation_tokens = Counter(
            "kollm:generation_tokens", "Tokens generated.", label, registry=r
        )
        self.rejected = Counter(
            "kollm:requests_rejected", "Requests refused with 429 (queue full).", label, registry=r
        )
        self.off_domain = Counter(
            "kollm:requests_off_domain", "Requests declined by the domain guard.", label, registry=r
        )
        self.rag_requests = Counter(
            "kollm:rag_requests", "Chat requests answered from a collection.", label, registry=r
        )
        self.rag_no_source = Counter(
            "kollm:rag_no_source",
            "RAG requests with no chunk above the thresholds (answered: no source).",
            label,
            registry=r,
        )
        self.request_log_failures = Counter(
            "kollm:request_log_failures",
            "Answers given but not written to the request log (a full disk, a read-only store).",
            label,
            registry=r,
        )

    def watch_engines(self, restarts: Callable[[], dict[str, int]]) -> None:
        """`kollm:engine_restarts_total`, read at each scrape from `restarts()` (model ->
        times its engine's server process was started again after it died): the engine
        counts them, so the number cannot drift from what /health says."""
        self.registry.register(_EngineRestarts(restarts))


class _EngineRestarts:
    def __init__(self, restarts: Callable[[], dict[str, int]]) -> None:
        self.restarts = restarts

    def describe(self) -> list:
        return []  # read at scrape time: nothing to check for clashes at registration

    def collect(self):
        family = CounterMetricFamily(
            "kollm:engine_restarts",
            "Times an engine's server process (llama-server) was started again after it died.",
            labels=["model_name"],
        )
        for model, count in self.restarts().items():
            family.add_metric([model], count)
        yield family
