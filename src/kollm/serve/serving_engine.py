"""What the chat and completion services share, after vLLM's serving classes (OpenAIServing):
finding the model, decoding settings, the checks made before any work (characters, token ids,
the context), queueing with 429, waiting with 499/504, and the request log; and the one state
a request carries from its route to its log, `RequestContext`.

A serving class owns a request from its parsed body to its logged answer: the route parses and
makes one call. The steps hand each other the context, not long argument lists, so what a step
made (the prompt's token ids, the citations) is made once and read where it is needed."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import StreamingResponse
from jinja2 import TemplateError

from kollm.config import TaskConfig
from kollm.engines import ENGINE_SAMPLING
from kollm.engines.base import (
    Generation,
    GenerationParams,
    RequestRejected,
    sampling_used,
)
from kollm.engines.structured import valid_json
from kollm.feedback.responses import RequestLog
from kollm.prompts import Messages
from kollm.serve import protocol as p
from kollm.serve.batching import Job, QueueFull
from kollm.serve.errors import ApiError
from kollm.serve.frames import finished
from kollm.serve.retrieval import Retrieved
from kollm.serve.service import ModelManager, ServedModel

log = logging.getLogger("kollm.serve")
T = TypeVar("T")

CHARS_PER_TOKEN = 32
"""More characters than any tokenizer served here puts in one token of real text (Korean is
1-2 a token, English about 4): a text longer than context_length * CHARS_PER_TOKEN cannot
fit the context, and is refused before it is tokenised (24 MB took 24 s to tokenise)."""


def too_long(context: int, prompt: int, completion: int, param: str) -> ApiError:
    """vLLM's 400 for a request past the context, with its token counts."""
    where = "messages" if param == "messages" else "prompt"
    return ApiError(
        400,
        f"This model's maximum context length is {context} tokens. However, you requested "
        f"{prompt + completion} tokens ({prompt} in the {where}, {completion} in the "
        f"completion). Please reduce the length of the {where} or completion.",
        "invalid_request_error",
        param,
    )


@dataclass(eq=False)
class RequestContext:
    """One request's state, from its route to the request log."""

    endpoint: str  # what the request log calls the route: chat, completions
    rid: str
    body: Any  # the parsed request
    raw: Request  # the HTTP request, to see the client leave
    served: ServedModel
    adapter: str | None
    started: float  # perf_counter when the request arrived: the log's latency
    params: GenerationParams | None = None
    messages: Messages = field(default_factory=list)
    retrieved: Retrieved | None = None
    prompt: str = ""  # the prompt's text (a completion given ids: decoded, for echo)
    prompt_ids: list[int] = field(default_factory=list)  # tokenised once; what the engine runs
    job: Job | None = None
    citations: list[p.Citation] | None = None  # None: the request used no retrieval
    tools: list[dict] | None = None  # the request's tools, as the chat template takes them
    tool_parser: Any = None  # reads the model's tool calls out of its answer (tool_parsers)
    forced_tools: bool = False  # a call is required: the answer is a JSON list of calls
    choice: int = 0  # which of the request's `n` choices this context runs
    # response_format's schema, when the engine answers it unconstrained: each answer is
    # checked against it instead (serve.unconstrained_json)
    unchecked_schema: str | None = None
    task_name: str | None = None  # the task service `MODEL/TASK` or the `task` field names
    task: TaskConfig | None = None

    def schema_valid(self, text: str) -> bool | None:
        """Whether an unconstrained answer is valid under the request's schema (None: the
        request had none, or the engine enforced it)."""
        if self.unchecked_schema is None:
            return None
        return valid_json(text, self.unchecked_schema)

    def cite(self, answer: str) -> list[p.Citation] | None:
        """The answer's citations, computed once: the response and the request log share
        them. None for a request without retrieval."""
        if self.retrieved is not None and self.citations is None:
            self.citations = self.retrieved.citations(answer)
        return self.citations


class ServingEngine:
    """The base of the serving classes (vLLM's OpenAIServing): each step takes the request's
    `RequestContext`; /tokenize and /v1/embeddings use its checks directly."""

    def __init__(
        self,
        manager: ModelManager,
        request_log: RequestLog | None,
        request_timeout_s: float = 120.0,
        default_max_tokens: int = 128,
        log_requests: bool = True,
        unconstrained_json: bool = False,
    ) -> None:
        self.manager, self.request_log = manager, request_log
        self.request_timeout_s, self.default_max_tokens = request_timeout_s, default_max_tokens
        self.log_requests = log_requests and request_log is not None
        self.unconstrained_json = unconstrained_json

    def find(self, model: str) -> tuple[ServedModel, str | None]:
        """The served model and adapter an API id names; 404 otherwise."""
        found = self.manager.lookup(model)
        if found is None:
            raise ApiError(404, f"model '{model}' is not served here", "not_found_error", "model")
        return found

    def context(self, endpoint: str, body, raw: Request, prefix: str) -> RequestContext:
        """A request's state: its model (404 if not served), its task service and a new id;
        the body records the task, so the request log does."""
        started = time.perf_counter()
        model, task_name = self.split_task(body)
        served, adapter = self.find(model)
        if task_name is not None:
            body = body.model_copy(update={"task": task_name})
        ctx = RequestContext(endpoint, p.new_id(prefix), body, raw, served, adapter, started)
        if task_name is not None:
            ctx.task_name, ctx.task = task_name, self.find_task(served, task_name)
        return ctx

    def split_task(self, body) -> tuple[str, str | None]:
        """(model id, task name) of a request: `MODEL/TASK` or the `task` field; 400 naming
        `task` when the two name different tasks."""
        model, named = body.model, getattr(body, "task", None)
        if "/" not in model or self.manager.lookup(model) is not None:
            return model, named
        model, _, in_id = model.rpartition("/")
        if named is not None and named != in_id:
            raise ApiError(
                400,
                f"task: '{named}' conflicts with the task '{in_id}' that model "
                f"'{body.model}' names; give one of them",
                "invalid_request_error",
                "task",
            )
        return model, in_id

    @staticmethod
    def find_task(served: ServedModel, name: str) -> TaskConfig:
        """The task service of a served model; 404 naming `task` and the ones it has."""
        if name in served.tasks:
            return served.tasks[name]
        raise ApiError(
            404,
            f"task '{name}' is not served for model '{served.model_id}' (its tasks: "
            f"{', '.join(sorted(served.tasks))})",
            "not_found_error",
            "task",
        )

    @staticmethod
    def require(served: ServedModel, capability: str, param: str) -> None:
        """400 naming `param` when the model's engine cannot do `capability` (scoring,
        embeddings), before any work is done."""
        if getattr(served.engine.capabilities, capability):
            return
        can = {"scoring": "transformers or ctranslate2", "embeddings": "transformers"}[capability]
        what = {"scoring": "token log-probabilities", "embeddings": "embeddings"}[capability]
        raise ApiError(
            400,
            f"the {served.engine.name} engine gives no {what}: serve the model with the {can} "
            "engine for them",
            "invalid_request_error",
            param,
        )

    def params(self, ctx: RequestContext, max_tokens: int | None) -> GenerationParams:
        """Decoding settings from a request body; temperature 0 is greedy. A setting the
        model's engine does not honour is a 400 naming it and the engines that do."""
        body = ctx.body
        if body.unknown_fields():
            log.info("ignored unknown request fields: %s", ", ".join(body.unknown_fields()))
        sample = body.temperature > 0
        params = GenerationParams(
            max_new_tokens=max_tokens or self.default_max_tokens,
            do_sample=sample,
            temperature=body.temperature if sample else 1.0,
            top_p=body.top_p,
            seed=body.seed,
            stop=body.stop_list(),
            repetition_penalty=body.repetition_penalty,
            top_k=max(body.top_k or 0, 0),
            min_p=body.min_p,
            presence_penalty=body.presence_penalty,
            frequency_penalty=body.frequency_penalty,
            logit_bias=body.token_biases(),
            json_schema=body.response_format.schema_json() if body.response_format else None,
        )
        engine = ctx.served.engine
        unconstrained = "json_schema" not in engine.capabilities.sampling
        if params.json_schema and unconstrained and self.unconstrained_json:
            # answered free, then checked against the schema (serve.unconstrained_json)
            ctx.unchecked_schema = params.json_schema
            params = replace(params, json_schema=None)
        self._check_sampling(ctx.served, params)
        self._check_stop_ids(ctx.served, body.stop_token_ids or [])
        if params.logit_bias:
            self.check_ids(ctx.served, [t for t, _ in params.logit_bias], "logit_bias")
        return params

    @staticmethod
    def _check_stop_ids(served: ServedModel, ids: list[int]) -> None:
        """vLLM's stop_token_ids: every engine already stops on the model's end ids, so a
        request naming those is answered; another id is a 400 (not ignored)."""
        ends = set(getattr(served.engine, "end_ids", ()))
        others = [i for i in ids if i not in ends]
        if others:
            raise ApiError(
                400,
                f"stop_token_ids: {others[0]} is not one of {served.model_id}'s end ids "
                f"{sorted(ends)}, the only ones kollm stops on; use stop strings",
                "invalid_request_error",
                "stop_token_ids",
            )

    @staticmethod
    def _check_sampling(served: ServedModel, params: GenerationParams) -> None:
        engine = served.engine
        missing = [f for f in sampling_used(params) if f not in engine.capabilities.sampling]
        if missing:
            others = ", ".join(n for n, fields in ENGINE_SAMPLING.items() if missing[0] in fields)
            param = "response_format" if missing[0] == "json_schema" else missing[0]
            raise ApiError(
                400,
                f"{param}: the {engine.name} engine serving {served.model_id} does not "
                f"support it (engines that do: {others})",
                "invalid_request_error",
                param,
            )

    @staticmethod
    def check_chars(served: ServedModel, chars: int, param: str) -> None:
        """400 at once for a text of `chars` characters that cannot fit the context (before
        tokenising it: megabytes of text would hold a worker for seconds)."""
        context = served.engine.context_length
        if chars > context * CHARS_PER_TOKEN:
            raise ApiError(
                400,
                f"{param}: {chars} characters cannot fit the context of {context} tokens (at "
                f"most {context * CHARS_PER_TOKEN} characters are tokenised)",
                "invalid_request_error",
                param,
            )

    @staticmethod
    def check_ids(served: ServedModel, ids: list[int], param: str, index: int | None = None):
        """400 naming the first id outside the model's vocabulary: an engine given one
        crashes (CTranslate2 segfaults) or fails with a 500."""
        vocab = served.engine.vocab_size or 2**31  # unknown: still an int32
        problem = p.bad_token_id(ids, vocab)
        if problem is not None:
            where = param if index is None else f"{param}[{index}]"
            raise ApiError(400, f"{where}: {problem}", "invalid_request_error", param)

    async def tokenize(self, served: ServedModel, text: str, param: str) -> list[int]:
        """The ids of `text`, tokenised in a worker thread (the event loop keeps answering)
        once the text has passed the character bound."""
        self.check_chars(served, len(text), param)
        return await asyncio.to_thread(served.engine.tokenize, text)

    @staticmethod
    async def templated(build: Callable[[], T]) -> T:
        """What `build()` makes of a conversation through the chat template, in a worker
        thread; a conversation the template refuses (no user turn, roles out of order) is a
        400 naming `messages`, not a 500."""
        try:
            return await asyncio.to_thread(build)
        except (ValueError, TemplateError) as err:
            raise ApiError(400, f"messages: {err}", "invalid_request_error", "messages") from None

    async def prompt(
        self,
        served: ServedModel,
        messages: Messages,
        tools: list[dict] | None = None,
        template_kwargs: dict | None = None,
    ) -> str:
        """The chat prompt of `messages`, in the format the version was trained with."""
        return await self.templated(lambda: served.prompt_for(messages, tools, template_kwargs))

    def check_length(self, ctx: RequestContext, param: str) -> None:
        """400 for a prompt of no tokens, and (as vLLM answers) for one whose tokens and
        max_tokens do not fit the model's context, with both counts."""
        n, context = len(ctx.prompt_ids), ctx.served.engine.context_length
        if n == 0:  # engines cannot start from nothing (CTranslate2 failed in C++ on it)
            raise ApiError(
                400, f"{param}: the prompt has no tokens", "invalid_request_error", param
            )
        if n + ctx.params.max_new_tokens > context:
            raise too_long(context, n, ctx.params.max_new_tokens, param)

    def submit(self, ctx: RequestContext, stream: bool, param: str = "messages") -> Job:
        """Queue the request's prompt ids (the engine runs them as they are, and the batcher
        groups by their count); 429 with Retry-After when the model's queue is full."""
        self.check_length(ctx, param)
        try:
            ctx.job = ctx.served.batcher.submit(ctx.prompt_ids, ctx.params, ctx.adapter, stream)
        except QueueFull:
            raise ApiError(
                429,
                f"the queue of '{ctx.served.model_id}' is full; retry shortly",
                "rate_limit_error",
                headers={"Retry-After": "1"},
            ) from None
        return ctx.job

    def submit_n(self, ctx: RequestContext, stream: bool, param: str) -> list[RequestContext]:
        """The request's `n` choices, each a context with its own job, queued together so
        that the batcher (or the engine) runs them side by side; a seeded request's choices
        take seeds seed, seed + 1, ..., so each differs and each can be had again. The
        request's own context keeps the first choice's job (the one the log records)."""
        runs = []
        for i in range(ctx.body.n):
            seed = None if ctx.params.seed is None else ctx.params.seed + i
            runs.append(replace(ctx, params=replace(ctx.params, seed=seed), job=None, choice=i))
        try:
            for run in runs:
                self.submit(run, stream, param)
        except ApiError:  # a full queue took some: they are not left to run for nobody
            self.cancel(runs)
            raise
        ctx.job = runs[0].job
        return runs

    @staticmethod
    def cancel(runs: list[RequestContext]) -> None:
        for run in runs:
            if run.job is not None and not run.job.future.done():
                run.served.batcher.cancel(run.job)

    async def generate_n(self, ctx: RequestContext, param: str) -> list[Generation]:
        """The answers of the request's `n` choices."""
        runs = self.submit_n(ctx, False, param)
        try:
            return list(await asyncio.gather(*(self.wait(run) for run in runs)))
        finally:
            self.cancel(runs)

    async def wait(self, ctx: RequestContext) -> Generation:
        """The job's result; cancels it if the client leaves or the timeout passes."""
        deadline = time.monotonic() + self.request_timeout_s
        job, batcher = ctx.job, ctx.served.batcher
        while True:
            done, _ = await asyncio.wait({job.future}, timeout=0.25)
            if done:
                try:
                    return job.future.result()
                except RequestRejected as err:
                    raise ApiError(400, str(err), "invalid_request_error") from None
            if await ctx.raw.is_disconnected():
                batcher.cancel(job)
                raise ApiError(499, "client closed the request", "cancelled")
            if time.monotonic() > deadline:
                batcher.cancel(job)
                raise ApiError(504, "the request timed out", "timeout")

    async def record(self, ctx: RequestContext, result: Generation) -> None:
        """Log the request and its answer (PII-masked) with the version that answered and,
        for a RAG answer, the chunks it was given and cited. Best effort: an answer the log
        cannot take (a full disk, a read-only store) is still given; the failure is counted
        (`kollm:request_log_failures`) and `/health` says degraded."""
        if not self.log_requests:
            return
        sources = ctx.retrieved.log(ctx.citations) if ctx.retrieved is not None else None
        try:
            await asyncio.to_thread(
                self.request_log.write,
                ctx.rid,
                ctx.endpoint,
                ctx.served.model_id,
                ctx.served.version,
                ctx.body.model_dump(exclude_none=True),
                result.text,
                result.prompt_tokens,
                result.completion_tokens,
                result.finish_reason,
                (time.perf_counter() - ctx.started) * 1000,
                sources,
            )
        except Exception:  # RequestLog warned and keeps the reason for /health
            metrics = self.manager.metrics
            metrics.request_log_failures.labels(model_name=ctx.served.model_id).inc()

    def stream_response(self, ctx: RequestContext, stream) -> StreamingResponse:
        """The SSE response of the request's job; the whole answer is logged once it has
        finished (with the citations its last chunk gave)."""
        return StreamingResponse(
            self._logged(ctx, stream),
            media_type="text/event-stream",
            headers={"X-Request-Id": ctx.rid},
        )

    async def _logged(self, ctx: RequestContext, stream) -> AsyncIterator[str]:
        """Pass the stream through, then log the whole answer once it finished."""
        async for item in stream:
            yield item
        result = finished(ctx.job)
        if result is None:
            return
        try:
            ctx.cite(result.text)  # the last chunk computed them already: this reads them
            await self.record(ctx, result)
        except Exception:  # the client has its whole answer: a failed log must not cut it
            log.exception("logging a streamed answer failed")
