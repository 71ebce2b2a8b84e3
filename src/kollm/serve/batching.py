"""A bounded queue per model, and what takes requests from it to the engine: a batcher that
runs waiting requests as static engine batches, or, for an engine that schedules its own
sequences (vLLM, llama.cpp: continuous batching), a dispatcher that hands each request over
as it arrives.

Batcher:

Requests with the same decoding settings (and adapter) that wait together form one batch, up
to `max_batch`, so throughput rises with concurrency. For an engine whose batch pays a step for
every prompt token past the shortest prompt (CTranslate2's decoder-only models), the waiting
requests are grouped by prompt length first (`length_groups`). A full queue refuses new requests
(the app answers 429). A request whose client left while it waited is dropped before it
reaches the engine; one already in a batch finishes, and its answer is discarded. Streamed
requests are batched too: the engine's per-token callback feeds each request's decoder.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from kollm.engines.base import Engine, Generation, GenerationParams, IncrementalDecoder, Prompt
from kollm.serve.metrics import ServerMetrics


class QueueFull(Exception):
    """The model's queue holds `max_queue` waiting requests already."""


@dataclass(eq=False)
class Job:
    prompt: Prompt  # token ids where the server has tokenised it: the engine uses them as is
    params: GenerationParams
    adapter: str | None
    future: asyncio.Future
    deltas: asyncio.Queue | None = None  # text pieces for a streamed request; None ends it
    enqueued: float = field(default_factory=time.perf_counter)
    cancelled: bool = False
    first_token_at: float | None = None
    last_token_at: float | None = None
    prompt_tokens: int | None = None  # len(prompt) for ids; a text is counted to group it
    # set when the client leaves: an engine with `capabilities.cancellation` stops the sequence
    cancel_event: threading.Event = field(default_factory=threading.Event)

    def key(self) -> tuple:
        return (self.params, self.adapter)


def length_groups(lengths: list[int], steps: int, max_size: int) -> list[list[int]]:
    """Indices of `lengths` split into batches of similar length, at most `max_size` each.

    A batch of an engine that feeds prompt tokens past its shortest prompt one step at a time
    costs about (longest - shortest) + `steps` decoding steps; two batches run one after the
    other pay `steps` twice. The split of the sorted lengths into contiguous groups with the
    least total cost is found by dynamic programming (a few hundred requests at most)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    sizes = [lengths[i] for i in order]
    best = [0.0] + [float("inf")] * len(order)  # best[j]: cost of the first j sorted lengths
    cut = [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        for start in range(max(0, end - max_size), end):
            cost = best[start] + sizes[end - 1] - sizes[start] + steps
            if cost < best[end]:
                best[end], cut[end] = cost, start
    groups, end = [], len(order)
    while end > 0:
        groups.append(sorted(order[cut[end] : end]))
        end = cut[end]
    return groups[::-1]


class Batcher:
    def __init__(
        self,
        engine: Engine,
        model_name: str,
        metrics: ServerMetrics,
        max_batch: int = 8,
        max_queue: int = 64,
        max_wait_s: float = 0.005,
        max_gather_s: float = 0.1,
    ) -> None:
        self.engine, self.model_name, self.metrics = engine, model_name, metrics
        self.max_batch, self.max_queue, self.max_wait_s = max_batch, max_queue, max_wait_s
        self.max_gather_s = max_gather_s
        self._last_size, self._last_end = 0, 0.0  # the latest batch: its size, when it ended
        self._waiting: deque[Job] = deque()
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"engine-{model_name}"
        )
        self._task: asyncio.Task | None = None
        self._running = 0
        self._closing = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    @property
    def busy(self) -> int:
        return len(self._waiting) + self._running

    def submit(
        self,
        prompt: Prompt,
        params: GenerationParams,
        adapter: str | None = None,
        stream: bool = False,
    ) -> Job:
        """Queue a request; raises QueueFull when `max_queue` requests already wait. A prompt
        given as token ids spares the batcher tokenising it on the event loop to group by
        length, and the engine tokenising it again."""
        if self._closing or len(self._waiting) >= self.max_queue:
            self.metrics.rejected.labels(self.model_name).inc()
            raise QueueFull(self.model_name)
        loop = asyncio.get_running_loop()
        job = Job(
            prompt, params, adapter, loop.create_future(), asyncio.Queue() if stream else None
        )
        if not isinstance(prompt, str):
            job.prompt_tokens = len(prompt)
        self._waiting.append(job)
        self.metrics.waiting.labels(self.model_name).set(len(self._waiting))
        self._wakeup.set()
        return job

    def cancel(self, job: Job) -> None:
        """The client left: a waiting job frees its place now; a running one is ignored."""
        job.cancelled = True
        job.cancel_event.set()
        if job in self._waiting:
            self._waiting.remove(job)
            self.metrics.waiting.labels(self.model_name).set(len(self._waiting))
        if not job.future.done():
            job.future.cancel()

    def _take_batch(self) -> list[Job]:
        first = self._waiting[0]
        batch = [j for j in self._waiting if j.key() == first.key()]
        if len(batch) > 1 and self.engine.capabilities.uneven_prompt_cost:
            batch = self._similar_lengths(batch)
        batch = batch[: self.max_batch]
        for job in batch:
            self._waiting.remove(job)
        self.metrics.waiting.labels(self.model_name).set(len(self._waiting))
        return batch

    def _similar_lengths(self, jobs: list[Job]) -> list[Job]:
        """The oldest job's group of `length_groups`, in arrival order. A prompt the tokenizer
        fails on keeps arrival order: the engine reports that failure to its request."""
        try:
            for job in jobs:
                if job.prompt_tokens is None:
                    job.prompt_tokens = len(self.engine.tokenize(job.prompt))
        except Exception:  # grouping is an optimisation; it must never stop the batcher
            return jobs
        lengths = [job.prompt_tokens or 0 for job in jobs]
        groups = length_groups(lengths, jobs[0].params.max_new_tokens, self.max_batch)
        return [jobs[i] for i in next(g for g in groups if 0 in g)]

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._waiting:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._gather()
            try:
                batch = self._take_batch()
            except Exception as err:  # never leave the loop: its waiting requests would hang
                batch = []
                for job in list(self._waiting):
                    self._waiting.remove(job)
                    self._fail(job, err)
            if batch:
                await self._run(loop, batch)

    async def _gather(self) -> None:
        """Let requests that come together join one batch. A static batch runs to its end, so
        a request left behind by a millisecond waits a whole batch. Right after a batch, the
        clients it answered come back: wait until at least as many as it held are here again.
        Then wait while requests keep arriving (`max_wait_s` without one ends it). At most
        `max_gather_s` in all."""
        now = time.perf_counter()
        deadline = now + self.max_gather_s
        expected = self._last_size if now - self._last_end < 1.0 else 0
        seen = -1
        while len(self._waiting) < self.max_batch:
            if len(self._waiting) >= expected and len(self._waiting) == seen:
                return
            seen = len(self._waiting)
            left = deadline - time.perf_counter()
            if left <= 0:
                return
            await asyncio.sleep(min(self.max_wait_s, left))

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list[Job]) -> None:
        started = time.perf_counter()
        for job in batch:
            self.metrics.queue_time.labels(self.model_name).observe(started - job.enqueued)
        self._running += len(batch)
        self.metrics.running.labels(self.model_name).set(self._running)
        self.metrics.batch_size.labels(self.model_name).observe(len(batch))
        decoders = [IncrementalDecoder(self.engine.decode, job.params.stop) for job in batch]

        def on_token(index: int, token_id: int) -> None:  # runs in the engine thread
            delta = decoders[index].push(token_id)
            loop.call_soon_threadsafe(self._token, batch[index], delta)

        prompts, params, adapter = [j.prompt for j in batch], batch[0].params, batch[0].adapter
        extra = {"adapter": adapter} if adapter is not None else {}  # only some engines take one
        try:
            results = await loop.run_in_executor(
                self._executor, lambda: self.engine.generate(prompts, params, on_token, **extra)
            )
        except Exception as err:  # the engine failed: every request of the batch gets the error
            for job in batch:
                self._fail(job, err)
        else:
            for job, decoder, result in zip(batch, decoders, results, strict=True):
                self._done(job, decoder.finish(), result)
        finally:
            self._running -= len(batch)
            self.metrics.running.labels(self.model_name).set(self._running)
            self._last_size, self._last_end = len(batch), time.perf_counter()

    def _token(self, job: Job, delta: str) -> None:
        now = time.perf_counter()
        if job.first_token_at is None:
            job.first_token_at = now
            self.metrics.ttft.labels(self.model_name).observe(now - job.enqueued)
        elif job.last_token_at is not None:
            self.metrics.itl.labels(self.model_name).observe(now - job.last_token_at)
        job.last_token_at = now
        if delta and job.deltas is not None and not job.cancelled:
            job.deltas.put_nowait(delta)

    def _done(self, job: Job, tail: str, result: Generation) -> None:
        self.metrics.e2e.labels(self.model_name).observe(time.perf_counter() - job.enqueued)
        self.metrics.prompt_tokens.labels(self.model_name).inc(result.prompt_tokens)
        self.metrics.generation_tokens.labels(self.model_name).inc(result.completion_tokens)
        if job.deltas is not None:
            if tail:
                job.deltas.put_nowait(tail)
            job.deltas.put_nowait(None)
        if not job.future.done():
            job.future.set_result(result)

    def _fail(self, job: Job, err: Exception) -> None:
        if job.deltas is not None:
            job.deltas.put_nowait(None)
        if not job.future.done():
            job.future.set_exception(err)

    async def close(self, timeout_s: float = 30.0) -> None:
        """Refuse new requests, finish the waiting and running ones, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout_s)
            except TimeoutError:
                self._task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)


class Dispatcher(Batcher):
    """Requests to an engine that schedules its own sequences, each handed over as it arrives
    (see the module's docstring). Shares the batcher's queue, metrics and answers."""

    def __init__(
        self,
        engine: Engine,
        model_name: str,
        metrics: ServerMetrics,
        max_concurrency: int | None = None,
        max_queue: int = 64,
    ) -> None:
        super().__init__(engine, model_name, metrics, max_batch=1, max_queue=max_queue)
        self.max_concurrency = max_concurrency or engine.capabilities.max_concurrency
        # a thread per request in flight: the engine call blocks while its sequence streams
        self._executor = ThreadPoolExecutor(
            max_workers=self.max_concurrency, thread_name_prefix=f"engine-{model_name}"
        )
        self._active: dict[Job, asyncio.Task] = {}

    def start(self) -> None:
        """Nothing to run in the background: requests start as they are submitted."""

    def submit(
        self,
        prompt: Prompt,
        params: GenerationParams,
        adapter: str | None = None,
        stream: bool = False,
    ) -> Job:
        """Start the request now if fewer than `max_concurrency` run, else queue it; raises
        QueueFull when `max_queue` already wait."""
        job = super().submit(prompt, params, adapter, stream)
        self._pump()
        return job

    def _pump(self) -> None:
        while self._waiting and self._running < self.max_concurrency:
            job = self._waiting.popleft()
            self.metrics.waiting.labels(self.model_name).set(len(self._waiting))
            self._running += 1
            self.metrics.running.labels(self.model_name).set(self._running)
            self._active[job] = asyncio.get_running_loop().create_task(self._one(job))

    async def _one(self, job: Job) -> None:
        loop = asyncio.get_running_loop()
        self.metrics.queue_time.labels(self.model_name).observe(time.perf_counter() - job.enqueued)
        decoder = IncrementalDecoder(self.engine.decode, job.params.stop)

        def on_token(index: int, token_id: int) -> None:  # runs in the engine's thread
            delta = decoder.push(token_id)
            loop.call_soon_threadsafe(self._token, job, delta)

        extra: dict = {"adapter": job.adapter} if job.adapter is not None else {}
        if self.engine.capabilities.cancellation:
            extra["cancel"] = job.cancel_event
        try:
            (result,) = await loop.run_in_executor(
                self._executor,
                lambda: self.engine.generate([job.prompt], job.params, on_token, **extra),
            )
        except Exception as err:
            self._fail(job, err)
        else:
            self._done(job, decoder.finish(), result)
        finally:
            self._active.pop(job, None)
            self._running -= 1
            self.metrics.running.labels(self.model_name).set(self._running)
            self._pump()

    async def close(self, timeout_s: float = 30.0) -> None:
        """Refuse new requests, let the waiting and running ones finish for `timeout_s`, then
        stop what still runs upstream."""
        self._closing = True
        deadline = time.perf_counter() + timeout_s
        while (self._waiting or self._active) and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
        for job in list(self._waiting):
            self.cancel(job)
        for job in list(self._active):
            job.cancel_event.set()
        if self._active:
            await asyncio.wait(list(self._active.values()), timeout=5)
        self._executor.shutdown(wait=False, cancel_futures=True)
