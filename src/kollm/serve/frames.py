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
from kollm.serve.tool_parsers import ToolCall, ToolStream, forced_calls

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
    choices = []
    for i, r in enumerate(results):
        message, finish = _message(ctx, r)
        choices.append(p.ChatChoice(index=i, message=message, finish_reason=finish))
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


def _calls(ctx: RequestContext, text: str) -> tuple[str | None, tuple[ToolCall, ...]]:
    """The answer's text outside its tool calls, and the calls (none: all text)."""
    if ctx.forced_tools:
        calls = forced_calls(text)
        return (None, calls) if calls else (text, ())
    if ctx.tool_parser is not None:
        parsed = ctx.tool_parser.parse(text)
        return parsed.content, parsed.calls
    return text, ()


def _message(ctx: RequestContext, result: Generation) -> tuple[dict, str]:
    """An answer as OpenAI's assistant message, and its finish reason (`tool_calls` when it
    calls a tool)."""
    content, calls = _calls(ctx, result.text)
    if not calls:
        return {"role": "assistant", "content": result.text}, result.finish_reason
    message = {"role": "assistant", "content": content, "tool_calls": _call_items(calls)}
    return message, "tool_calls"


def _call_items(calls, streamed: bool = False) -> list[dict]:
    """Tool calls in OpenAI's shape (with their `index` in a stream's delta)."""
    items = []
    for i, call in enumerate(calls):
        function = {"name": call.name, "arguments": call.arguments}
        item = {"id": call.id, "type": "function", "function": function}
        items.append({"index": i, **item} if streamed else item)
    return items


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


async def chat_tool_stream(ctx: RequestContext) -> AsyncIterator[str]:
    """SSE chunks of a chat completion whose answer may call tools: text passes as it comes
    until a call may be starting; the calls follow whole, in one `delta.tool_calls`, when
    the answer has ended (a required call: nothing but the calls), finish_reason
    `tool_calls`. An answer whose call does not parse ends as text."""
    stream = None if ctx.forced_tools else ToolStream(ctx.tool_parser)
    yield _chat_chunk(ctx, {"role": "assistant", "content": ""})
    async for delta in _deltas(ctx):
        piece = delta if stream is None else stream.push(delta)
        if piece and stream is not None:
            yield _chat_chunk(ctx, {"content": piece})
    result = finished(ctx.job)
    if result is None:
        yield "data: [DONE]\n\n"
        return
    if stream is None:
        calls = forced_calls(result.text)
        rest = "" if calls else result.text
    else:
        rest, calls = stream.finish()
    if rest:
        yield _chat_chunk(ctx, {"content": rest})
    if calls:
        yield _chat_chunk(ctx, {"tool_calls": _call_items(calls, streamed=True)})
    with_usage = ctx.body.include_usage()
    extra = {"citations": ctx.cite(result.text)} if ctx.retrieved is not None else None
    finish = "tool_calls" if calls else result.finish_reason
    yield _chat_chunk(ctx, {}, finish, None, None if with_usage else extra)
    if with_usage:
        yield _chat_chunk(ctx, {}, None, usage(result), extra)
    yield "data: [DONE]\n\n"


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
