"""Engines that batch their own sequences (vLLM, llama.cpp) get each request as it arrives:
every request up to the concurrency limit is in flight at once, one sent while a long one
streams starts without waiting for it, the rest wait in the bounded queue, and a client that
leaves stops its sequence in the engine."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from kollm.engines.base import Capabilities, Generation, GenerationParams
from kollm.serve.batching import Batcher, Dispatcher, QueueFull
from kollm.serve.metrics import ServerMetrics
from kollm.serve.service import ModelManager


class _ContinuousEngine:
    """Streams one token every `step_s` for each sequence, each in its own call (as the
    vLLM engine's HTTP stream does), and records how many run at once."""

    def __init__(self, step_s: float = 0.01, max_concurrency: int = 8) -> None:
        self.capabilities = Capabilities(
            self_scheduling=True, max_concurrency=max_concurrency, cancellation=True
        )
        self.step_s = step_s
        self.lock = threading.Lock()
        self.running = self.most = 0
        self.calls: list[list[str]] = []
        self.cancelled: list[str] = []

    def generate(self, prompts, params, on_token=None, adapter=None, cancel=None):
        assert len(prompts) == 1, "a self-scheduling engine gets one request a call"
        with self.lock:
            self.calls.append(list(prompts))
            self.running += 1
            self.most = max(self.most, self.running)
        produced, finish = 0, "length"
        try:
            for produced in range(1, params.max_new_tokens + 1):
                if cancel is not None and cancel.is_set():
                    self.cancelled.append(prompts[0])
                    finish, produced = "cancelled", produced - 1
                    break
                time.sleep(self.step_s)
                if on_token is not None:
                    on_token(0, 1)
        finally:
            with self.lock:
                self.running -= 1
        return [Generation("x" * produced, 1, produced, finish)]

    def decode(self, ids):
        return "x" * len(ids)


def _params(tokens: int) -> GenerationParams:
    return GenerationParams(max_new_tokens=tokens)


def test_sixteen_streamed_requests_are_all_in_flight_at_once():
    engine = _ContinuousEngine(step_s=0.005, max_concurrency=16)

    async def run():
        dispatcher = Dispatcher(engine, "m", ServerMetrics(), max_queue=64)
        dispatcher.start()
        jobs = [dispatcher.submit(f"q{i}", _params(40), stream=True) for i in range(16)]
        answers = await asyncio.gather(*(j.future for j in jobs))
        await dispatcher.close()
        return answers

    answers = asyncio.run(run())
    assert engine.most == 16 and len(engine.calls) == 16
    assert all(a.completion_tokens == 40 for a in answers)


def test_a_request_sent_while_a_long_one_streams_starts_without_waiting_for_it():
    engine = _ContinuousEngine(step_s=0.01)

    async def run():
        dispatcher = Dispatcher(engine, "m", ServerMetrics())
        dispatcher.start()
        long = dispatcher.submit("long", _params(200), stream=True)
        await asyncio.sleep(0.1)  # the long one is ~10 tokens in
        short = dispatcher.submit("short", _params(3), stream=True)
        await short.future
        long_done = long.future.done()
        await long.future
        await dispatcher.close()
        return short, long, long_done

    short, long, long_done = asyncio.run(run())
    assert not long_done  # the short answer came back while the long one still streamed
    assert short.first_token_at - short.enqueued < 0.2
    # a static batcher would have started it after the long one's 200 steps (~2 s)
    assert short.first_token_at < long.last_token_at


def test_past_the_concurrency_limit_requests_wait_and_past_the_queue_get_refused():
    engine = _ContinuousEngine(step_s=0.01, max_concurrency=2)

    async def run():
        dispatcher = Dispatcher(engine, "m", ServerMetrics(), max_queue=2)
        dispatcher.start()
        jobs = [dispatcher.submit(f"q{i}", _params(20)) for i in range(4)]
        assert dispatcher.busy == 4 and dispatcher._running == 2
        with pytest.raises(QueueFull):
            dispatcher.submit("one too many", _params(20))
        await asyncio.gather(*(j.future for j in jobs))
        await dispatcher.close()

    asyncio.run(run())
    assert engine.most == 2 and len(engine.calls) == 4


def test_a_client_that_leaves_stops_its_sequence_in_the_engine():
    engine = _ContinuousEngine(step_s=0.01)

    async def run():
        dispatcher = Dispatcher(engine, "m", ServerMetrics())
        dispatcher.start()
        job = dispatcher.submit("abandoned", _params(500), stream=True)
        await asyncio.sleep(0.1)
        dispatcher.cancel(job)
        started = time.perf_counter()
        while dispatcher._running and time.perf_counter() - started < 2:
            await asyncio.sleep(0.01)
        running = dispatcher._running
        await dispatcher.close()
        return running

    assert asyncio.run(run()) == 0
    assert engine.cancelled == ["abandoned"]  # stopped long before its 500 tokens (5 s)


def test_the_server_picks_the_dispatcher_by_what_the_engine_declares(tmp_path):
    manager = ModelManager([], "vllm", ServerMetrics(), max_concurrency=3)

    async def pick():
        continuous = manager._scheduler(_ContinuousEngine(), "a")
        static = manager._scheduler(type("Static", (), {"capabilities": Capabilities()})(), "b")
        return continuous, static

    continuous, static = asyncio.run(pick())
    assert isinstance(continuous, Dispatcher) and continuous.max_concurrency == 3
    assert type(static) is Batcher
    default = ModelManager([], "vllm", ServerMetrics())
    assert asyncio.run(_in_loop(default._scheduler, _ContinuousEngine(max_concurrency=7))) == 7


async def _in_loop(make, engine):
    return make(engine, "m").max_concurrency
