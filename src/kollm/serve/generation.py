"""The generation service: what the chat and completion routes share (finding the model,
decoding settings, the context check, queueing with 429, waiting with 499/504, the request
log) and the SSE stream builders, in OpenAI's chunk format."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse
from jinja2 import TemplateError

from kollm.engines.base import Generation, GenerationParams
from kollm.feedback.responses import RequestLog
from kollm.serve import protocol as p
from kollm.serve.batching import Job, QueueFull
from kollm.serve.errors import ApiError
from kollm.serve.service import ModelManager, ServedModel

log = logging.getLogger("kollm.serve")

CHARS_PER_TOKEN = 32
"""More characters than any tokenizer served here puts in one token of real text (Korean is
1-2 a token, English about 4): a text longer than context_length * CHARS_PER_TOKEN cannot
fit the context, and is refused before it is tokenised (24 MB took 24 s to tokenise)."""


class GenerationService:
    def __init__(
        self,
        manager: ModelManager,
        request_log: RequestLog | None,
        request_timeout_s: float = 120.0,
        default_max_tokens: int = 128,
        log_requests: bool = True,
    ) -> None:
        self.manager, self.request_log = manager, request_log
        self.request_timeout_s, self.default_max_tokens = request_timeout_s, default_max_tokens
        self.log_requests = log_requests and request_log is not None

    def find(self, model: str) -> tuple[ServedModel, str | None]:
        """The served model and adapter an API id names; 404 otherwise."""
        found = self.manager.lookup(model)
        if found is None:
            raise ApiError(404, f"model '{model}' is not served here", "not_found_error", "model")
        return found

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

    def params(self, body: p._Sampling, max_tokens: int | None) -> GenerationParams:
        """Decoding settings from a request body; temperature 0 is greedy."""
        if body.unknown_fields():
            log.info("ignored unknown request fields: %s", ", ".join(body.unknown_fields()))
        sample = body.temperature > 0
        return GenerationParams(
            max_new_tokens=max_tokens or self.default_max_tokens,
            do_sample=sample,
            temperature=body.temperature if sample else 1.0,
            top_p=body.top_p,
            seed=body.seed,
            stop=body.stop_list(),
        )

    @staticmethod
    def check_chars(served: ServedModel, chars: int, param: str) -> None:
        """413 at once for a text of `chars` characters that cannot fit the context."""
        context = served.engine.context_length
        if chars > context * CHARS_PER_TOKEN:
            raise ApiError(
                413,
                f"{param}: {chars} characters cannot fit the context of {context} tokens (at "
                f"most {context * CHARS_PER_TOKEN} characters are tokenised)",
                "invalid_request_error",
                param,
            )

    async def count_tokens(self, served: ServedModel, text: str, param: str) -> int:
        """The tokens of `text`, counted in a worker thread (the event loop keeps answering)
        once the text has passed the character bound."""
        self.check_chars(served, len(text), param)
        return len(await asyncio.to_thread(served.engine.tokenize, text))

    async def prompt(self, served: ServedModel, messages: list[dict], fit=None) -> str:
        """The chat prompt, built in a worker thread (`fit(messages)` first, when given: the
        retrieved context); a conversation the chat template refuses (no user turn, roles out
        of order) is a 400 naming `messages`, not a 500."""

        def build() -> str:
            return served.prompt_for(fit(messages) if fit is not None else messages)

        try:
            return await asyncio.to_thread(build)
        except (ValueError, TemplateError) as err:
            raise ApiError(400, f"messages: {err}", "invalid_request_error", "messages") from None

    async def check_length(
        self, served: ServedModel, prompt: str, params: GenerationParams, param: str = "messages"
    ) -> int:
        """The prompt's tokens; 413 when they and max_tokens do not fit the model's context."""
        n = await self.count_tokens(served, prompt, param)
        if n == 0:  # engines cannot start from nothing (CTranslate2 failed in C++ on it)
            raise ApiError(
                400, f"{param}: the prompt has no tokens", "invalid_request_error", param
            )
        if n + params.max_new_tokens > served.engine.context_length:
            raise ApiError(
                413,
                f"prompt of {n} tokens + max_tokens {params.max_new_tokens} exceeds the "
                f"context of {served.engine.context_length}",
                "invalid_request_error",
                param,
            )
        return n

    async def submit(
        self,
        served: ServedModel,
        prompt: str,
        params: GenerationParams,
        adapter,
        stream: bool,
        param: str = "messages",
    ) -> Job:
        """Queue a generation; 429 with Retry-After when the model's queue is full."""
        n = await self.check_length(served, prompt, params, param)
        try:
            # counted already: the batcher's length grouping need not tokenise again
            return served.batcher.submit(prompt, params, adapter, stream, prompt_tokens=n)
        except QueueFull:
            raise ApiError(
                429,
                f"the queue of '{served.model_id}' is full; retry shortly",
                "rate_limit_error",
                headers={"Retry-After": "1"},
            ) from None

    @staticmethod
    def check_ids(served: ServedModel, ids: list[int], param: str, index: int | None = None):
        """400 naming the first id outside the model's vocabulary: an engine given one
        crashes (CTranslate2 segfaults) or fails with a 500."""
        vocab = getattr(served.engine, "vocab_size", None) or 2**31  # unknown: still an int32
        problem = p.bad_token_id(ids, vocab)
        if problem is not None:
            where = param if index is None else f"{param}[{index}]"
            raise ApiError(400, f"{where}: {problem}", "invalid_request_error", param)

    async def wait(self, request: Request, served: ServedModel, job: Job) -> Generation:
        """The job's result; cancels it if the client leaves or the timeout passes."""
        deadline = time.monotonic() + self.request_timeout_s
        while True:
            done, _ = await asyncio.wait({job.future}, timeout=0.25)
            if done:
                return job.future.result()
            if await request.is_disconnected():
                served.batcher.cancel(job)
                raise ApiError(499, "client closed the request", "cancelled")
            if time.monotonic() > deadline:
                served.batcher.cancel(job)
                raise ApiError(504, "the request timed out", "timeout")

    async def record(
        self,
        endpoint: str,
        rid: str,
        served: ServedModel,
        body,
        result: Generation,
        started,
        rag: dict | None = None,
    ) -> None:
        """Log the request and its answer (PII-masked) with the version that answered and,
        for a RAG answer, the chunks it was given and cited. Best effort: an answer the log
        cannot take (a full disk, a read-only store) is still given; the failure is counted
        (`kollm:request_log_failures`) and `/health` says degraded."""
        if not self.log_requests:
            return
        try:
            await asyncio.to_thread(
                self.request_log.write,
                rid,
                endpoint,
                served.model_id,
                served.version,
                body.model_dump(exclude_none=True),
                result.text,
                result.prompt_tokens,
                result.completion_tokens,
                result.finish_reason,
                (time.perf_counter() - started) * 1000,
                rag,
            )
        except Exception:  # RequestLog warned and keeps the reason for /health
            self.manager.metrics.request_log_failures.labels(model_name=served.model_id).inc()

    def stream_response(
        self,
        endpoint: str,
        rid: str,
        served: ServedModel,
        body,
        job: Job,
        stream,
        started,
        rag=None,
    ) -> StreamingResponse:
        """The SSE response of a job; the whole answer is logged once it has finished
        (`rag(text)` gives what to log of its sources)."""

        async def log(text: str) -> None:
            sources = rag(text) if rag is not None else None
            await self.record(endpoint, rid, served, body, job.future.result(), started, sources)

        return StreamingResponse(
            _logged(stream, job, log), media_type="text/event-stream", headers={"X-Request-Id": rid}
        )


def _dump(chunk) -> dict:
    """A response body; `citations` only where the request used retrieval."""
    body = chunk.model_dump()
    if body.get("citations") is None:
        body.pop("citations", None)
    return body


def chat_response(
    rid: str,
    model: str,
    served: ServedModel,
    result: Generation,
    use: p.Usage,
    citations: list[p.Citation] | None = None,
) -> JSONResponse:
    """A chat completion in OpenAI's shape, with the model version (and the citations)."""
    choice = p.ChatChoice(
        message={"role": "assistant", "content": result.text}, finish_reason=result.finish_reason
    )
    body = p.ChatCompletion(
        id=rid,
        created=p.now(),
        model=model,
        choices=[choice],
        usage=use,
        model_version=served.version,
        citations=citations,
    )
    return JSONResponse(
        _dump(body), headers={"X-Request-Id": rid, "X-Model-Version": served.version}
    )


def _sse(obj) -> str:
    return f"data: {json.dumps(obj.model_dump(exclude_none=True), ensure_ascii=False)}\n\n"


async def _deltas(job: Job, request: Request, served: ServedModel) -> AsyncIterator[str]:
    """The job's text pieces as they come; cancels the job if the client leaves."""
    try:
        while True:
            try:
                delta = await asyncio.wait_for(job.deltas.get(), timeout=0.5)
            except TimeoutError:
                if await request.is_disconnected():
                    served.batcher.cancel(job)
                    return
                continue
            if delta is None:
                return
            yield delta
    except asyncio.CancelledError:
        served.batcher.cancel(job)
        raise


def _finished(job: Job) -> Generation | None:
    ok = job.future.done() and not job.future.cancelled() and job.future.exception() is None
    return job.future.result() if ok else None


def usage(result: Generation) -> p.Usage:
    """Token usage of a generation."""
    return p.Usage(
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        total_tokens=result.prompt_tokens + result.completion_tokens,
    )


async def _stream(job: Job, request, served, make, with_usage: bool, opening=None, tail=None):
    """SSE for one job: `make(delta, finish_reason, usage, extra)` builds each chunk in its
    format; `tail(result)` gives fields for the last chunk (the citations)."""
    if opening is not None:
        yield opening
    async for delta in _deltas(job, request, served):
        yield make(delta, None, None)
    result = _finished(job)
    if result is not None:
        extra = tail(result) if tail is not None else None
        yield make(None, result.finish_reason, None, None if with_usage else extra)
        if with_usage:  # as OpenAI: a last chunk with no choices and the usage
            yield make(None, None, usage(result), extra)
    yield "data: [DONE]\n\n"


def _frame(kind, rid: str, model: str, served: ServedModel, choices, use=None, extra=None) -> str:
    """One SSE chunk of `kind` (a chat chunk or a completion) for this response."""
    chunk = kind(
        id=rid,
        created=p.now(),
        model=model,
        choices=choices,
        usage=use,
        model_version=served.version,
        **(extra or {}),
    )
    return _sse(chunk)


def chat_stream(
    rid, model, served, job: Job, request, with_usage: bool, citations=None
) -> AsyncIterator[str]:
    """SSE chunks of a chat completion, opening with the assistant role; with `citations`
    (answer text -> citations), the last chunk carries them."""

    def make(delta: str | None, finish: str | None, use: p.Usage | None, extra=None) -> str:
        content = {"content": delta} if delta is not None else {}
        choices = [] if use else [p.ChatChunkChoice(delta=content, finish_reason=finish)]
        return _frame(p.ChatCompletionChunk, rid, model, served, choices, use, extra)

    def tail(result: Generation) -> dict:
        return {"citations": citations(result.text)}

    role = [p.ChatChunkChoice(delta={"role": "assistant", "content": ""})]
    opening = _frame(p.ChatCompletionChunk, rid, model, served, role)
    return _stream(
        job, request, served, make, with_usage, opening, tail if citations is not None else None
    )


async def fixed_chat_stream(
    rid, model, served, text: str, with_usage: bool, citations=None
) -> AsyncIterator[str]:
    """A chat stream of an answer given without generation (a refusal, no source)."""

    def chunk(delta: dict, finish: str | None = None, use=None, extra=None) -> str:
        choices = [] if use else [p.ChatChunkChoice(delta=delta, finish_reason=finish)]
        return _frame(p.ChatCompletionChunk, rid, model, served, choices, use, extra)

    extra = {"citations": citations} if citations is not None else None
    yield chunk({"role": "assistant", "content": ""})
    yield chunk({"content": text})
    yield chunk({}, "stop", None, None if with_usage else extra)
    if with_usage:
        yield chunk({}, None, p.Usage(prompt_tokens=0, completion_tokens=0, total_tokens=0), extra)
    yield "data: [DONE]\n\n"


def completion_stream(
    rid, model, served, job: Job, request, with_usage: bool
) -> AsyncIterator[str]:
    """SSE chunks of a text completion."""

    def make(delta: str | None, finish: str | None, use: p.Usage | None, extra=None) -> str:
        choices = [] if use else [p.CompletionChoice(text=delta or "", finish_reason=finish)]
        return _frame(p.Completion, rid, model, served, choices, use)

    return _stream(job, request, served, make, with_usage)


async def _logged(stream: AsyncIterator[str], job: Job, on_done) -> AsyncIterator[str]:
    """Pass the stream through, then log the whole answer once it finished."""

    async for item in stream:
        yield item
    if job.future.done() and not job.future.cancelled() and job.future.exception() is None:
        try:
            await on_done(job.future.result().text)
        except Exception:  # the client has its whole answer: a failed log must not cut it
            log.exception("logging a streamed answer failed")
