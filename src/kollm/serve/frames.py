"""What a generation sends back, in OpenAI's shapes: a chat completion's JSON, and the SSE
chunks of chat and text completions, each built from the request's `RequestContext`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from fastapi.responses import JSONResponse

from kollm.engines.base import Generation
from kollm.serve import protocol as p
from kollm.serve.batching import Job

if TYPE_CHECKING:
    from kollm.serve.serving_engine import RequestContext


def _dump(chunk) -> dict:
    """A response body; `citations` only where the request used retrieval."""
    body = chunk.model_dump()
    if body.get("citations") is None:
        body.pop("citations", None)
    return body


def usage(result: Generation) -> p.Usage:
    """Token usage of a generation."""
    return p.Usage(
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        total_tokens=result.prompt_tokens + result.completion_tokens,
    )


def chat_response(ctx: RequestContext, *results: Generation) -> JSONResponse:
    """A chat completion in OpenAI's shape, a choice a generation (`n`), with the model
    version (and the citations, of the first choice). The prompt is counted once."""
    choices = [
        p.ChatChoice(
            index=i,
            message={"role": "assistant", "content": r.text},
            finish_reason=r.finish_reason,
        )
        for i, r in enumerate(results)
    ]
    prompt_tokens = results[0].prompt_tokens
    completion_tokens = sum(r.completion_tokens for r in results)
    body = p.ChatCompletion(
        id=ctx.rid,
        created=p.now(),
        model=ctx.body.model,
        choices=choices,
        usage=p.Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        ),
        model_version=ctx.served.version,
        citations=ctx.citations,
    )
    headers = {"X-Request-Id": ctx.rid, "X-Model-Version": ctx.served.version}
    return JSONResponse(_dump(body), headers=headers)


def _sse(obj) -> str:
    return f"data: {json.dumps(obj.model_dump(exclude_none=True), ensure_ascii=False)}\n\n"


def finished(job: Job) -> Generation | None:
    """The job's result, if it ran to its end (not cancelled, not failed)."""
    ok = job.future.done() and not job.future.cancelled() and job.future.exception() is None
    return job.future.result() if ok else None


async def _deltas(ctx: RequestContext) -> AsyncIterator[str]:
    """The job's text pieces as they come; cancels the job if the client leaves."""
    job, batcher = ctx.job, ctx.served.batcher
    try:
        while True:
            try:
                delta = await asyncio.wait_for(job.deltas.get(), timeout=0.5)
            except TimeoutError:
                if await ctx.raw.is_disconnected():
                    batcher.cancel(job)
                    return
                continue
            if delta is None:
                return
            yield delta
    except asyncio.CancelledError:
        batcher.cancel(job)
        raise


async def _stream(ctx: RequestContext, make, opening=None, tail=None) -> AsyncIterator[str]:
    """SSE for the request's job: `make(delta, finish_reason, usage, extra)` builds each chunk
    in its format; `tail(result)` gives fields for the last chunk (the citations)."""
    if opening is not None:
        yield opening
    async for delta in _deltas(ctx):
        yield make(delta, None, None)
    result = finished(ctx.job)
    if result is not None:
        with_usage = ctx.body.include_usage()
        extra = tail(result) if tail is not None else None
        yield make(None, result.finish_reason, None, None if with_usage else extra)
        if with_usage:  # as OpenAI: a last chunk with no choices and the usage
            yield make(None, None, usage(result), extra)
    yield "data: [DONE]\n\n"


def _frame(kind, ctx: RequestContext, choices, use=None, extra=None) -> str:
    """One SSE chunk of `kind` (a chat chunk or a completion) for this response."""
    chunk = kind(
        id=ctx.rid,
        created=p.now(),
        model=ctx.body.model,
        choices=choices,
        usage=use,
        model_version=ctx.served.version,
        **(extra or {}),
    )
    return _sse(chunk)


def _chat_chunk(ctx: RequestContext, delta: dict, finish=None, use=None, extra=None) -> str:
    """A chat chunk: one choice with `delta`, or (with `use`) none and the usage."""
    choices = [] if use else [p.ChatChunkChoice(delta=delta, finish_reason=finish)]
    return _frame(p.ChatCompletionChunk, ctx, choices, use, extra)


def chat_stream(ctx: RequestContext) -> AsyncIterator[str]:
    """SSE chunks of a chat completion, opening with the assistant role; with retrieval, the
    last chunk carries the citations (the ones the request log keeps: `ctx.cite`)."""

    def make(delta: str | None, finish: str | None, use: p.Usage | None, extra=None) -> str:
        return _chat_chunk(ctx, {"content": delta} if delta is not None else {}, finish, use, extra)

    def tail(result: Generation) -> dict:
        return {"citations": ctx.cite(result.text)}

    opening = _chat_chunk(ctx, {"role": "assistant", "content": ""})
    return _stream(ctx, make, opening, tail if ctx.retrieved is not None else None)


async def fixed_chat_stream(ctx: RequestContext, text: str) -> AsyncIterator[str]:
    """A chat stream of an answer given without generation (a refusal, no source), with the
    request's citations where it has them."""
    with_usage = ctx.body.include_usage()
    extra = {"citations": ctx.citations} if ctx.citations is not None else None
    yield _chat_chunk(ctx, {"role": "assistant", "content": ""})
    yield _chat_chunk(ctx, {"content": text})
    yield _chat_chunk(ctx, {}, "stop", None, None if with_usage else extra)
    if with_usage:
        zero = p.Usage(prompt_tokens=0, completion_tokens=0, total_tokens=0)
        yield _chat_chunk(ctx, {}, None, zero, extra)
    yield "data: [DONE]\n\n"


def completion_stream(ctx: RequestContext) -> AsyncIterator[str]:
    """SSE chunks of a text completion."""

    def make(delta: str | None, finish: str | None, use: p.Usage | None, extra=None) -> str:
        choices = [] if use else [p.CompletionChoice(text=delta or "", finish_reason=finish)]
        return _frame(p.Completion, ctx, choices, use)

    return _stream(ctx, make)
