"""What a generation sends back, in OpenAI's shapes: a chat completion's JSON, and the SSE
chunks of chat and text completions, each built from the request's `RequestContext`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import TYPE_CHECKING

from fastapi.responses import JSONResponse

from kollm.engines.base import Generation
from kollm.serve import protocol as p
from kollm.serve import scoring
from kollm.serve.batching import Job
from kollm.serve.tool_parsers import ToolCall, ToolStream, forced_calls

if TYPE_CHECKING:
    from kollm.serve.serving_engine import RequestContext


def _dump(chunk) -> dict:
    """A response body; `citations` only where the request used retrieval, `task` only
    where it named a task service."""
    body = chunk.model_dump()
    for optional in ("citations", "task"):
        if body.get(optional) is None:
            body.pop(optional, None)
    return body


def chat_response(
    ctx: RequestContext, results: list[Generation], logprobs: list | None = None
) -> JSONResponse:
    """A chat completion in OpenAI's shape, a choice a generation (`n`), with the model
    version (and the citations, of the first choice). The prompt is counted once."""
    choices = []
    for i, r in enumerate(results):
        message, finish = _message(ctx, r)
        scored = logprobs[i] if logprobs else None
        valid = ctx.schema_valid(r.text)
        choices.append(
            p.ChatChoice(
                index=i, message=message, logprobs=scored, finish_reason=finish, schema_valid=valid
            )
        )
    body = p.ChatCompletion(
        id=ctx.rid,
        created=p.now(),
        model=ctx.body.model,
        choices=choices,
        usage=usage_of(results),
        model_version=ctx.served.version,
        citations=ctx.citations,
        task=ctx.task_name,
    )
    headers = {"X-Request-Id": ctx.rid, "X-Model-Version": ctx.served.version}
    return JSONResponse(_dump(body), headers=headers)


def usage_of(results: list[Generation]) -> p.Usage:
    """The usage of a request's choices: its prompt counted once, their answers added up."""
    prompt_tokens = results[0].prompt_tokens
    completion_tokens = sum(r.completion_tokens for r in results)
    return p.Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )


def _calls(ctx: RequestContext, text: str) -> tuple[str | None, tuple[ToolCall, ...]]:
    """The answer's text outside its tool calls, and the calls (none: all text)."""
    if ctx.forced_tools:
        calls = forced_calls(text)
        return (None, calls) if calls else (text, ())
    if ctx.tool_parser is not None:
        parsed = ctx.tool_parser.parse(text)
        return parsed.content, _allowed_calls(ctx, parsed.calls)
    return text, ()


def _allowed_calls(ctx: RequestContext, calls: tuple[ToolCall, ...]) -> tuple[ToolCall, ...]:
    """`parallel_tool_calls: false` keeps the first of several calls (as vLLM does)."""
    return calls if ctx.body.parallel_tool_calls else calls[:1]


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


async def sse(ctx: RequestContext, runs: list[RequestContext], streams: list) -> AsyncIterator[str]:
    """The SSE response of a request's choices: each choice's chunks as they come (`n` > 1:
    interleaved, each with its index), then, as OpenAI ends a stream, a chunk with no choices
    and the usage (when asked; with the citations, where the request used retrieval) and
    [DONE]."""
    async for frame in _interleave(streams):
        yield frame
    results = [finished(run.job) for run in runs]
    if all(r is not None for r in results) and ctx.body.include_usage():
        chunk = p.ChatCompletionChunk if ctx.endpoint == "chat" else p.Completion
        yield _frame(chunk, ctx, [], usage_of(results), _citations(ctx, results[0]))
    yield "data: [DONE]\n\n"


async def _interleave(streams: list) -> AsyncIterator[str]:
    """The frames of several async streams, in the order they come; a stream's error is
    raised once the others are stopped (each stops its job as it is cancelled)."""
    if len(streams) == 1:
        async for frame in streams[0]:
            yield frame
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(stream) -> None:
        try:
            async for frame in stream:
                await queue.put(frame)
        finally:
            await queue.put(None)

    tasks = [asyncio.create_task(pump(s)) for s in streams]
    try:
        left = len(tasks)
        while left:
            frame = await queue.get()
            if frame is None:
                left -= 1
            else:
                yield frame
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()


def _citations(ctx: RequestContext, result: Generation) -> dict | None:
    """The citations a stream's last chunk carries (the first choice's), where the request
    used retrieval."""
    return {"citations": ctx.cite(result.text)} if ctx.retrieved is not None else None


async def _ending(ctx: RequestContext, result: Generation, finish: str) -> str:
    """A choice's last chunk: its finish reason and, when asked, its logprobs (they come from
    a scoring pass once the answer is whole, so they arrive here, not with each piece); the
    first choice's carries the citations when no usage chunk follows."""
    logprobs = None
    if ctx.body.logprobs:
        logprobs = await scoring.chat_logprobs(
            ctx.served.engine, ctx.prompt_ids, result.text, ctx.body.top_logprobs or 0, ctx.adapter
        )
    last = ctx.choice == 0 and not ctx.body.include_usage()
    choice = p.ChatChunkChoice(
        index=ctx.choice,
        delta={},
        logprobs=logprobs,
        finish_reason=finish,
        schema_valid=ctx.schema_valid(result.text),
    )
    extra = _citations(ctx, result) if last else None
    return _frame(p.ChatCompletionChunk, ctx, [choice], None, extra)


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


def _chat_chunk(ctx: RequestContext, delta: dict, finish=None, extra=None) -> str:
    """A chat chunk of the context's choice with `delta`."""
    choice = p.ChatChunkChoice(index=ctx.choice, delta=delta, finish_reason=finish)
    return _frame(p.ChatCompletionChunk, ctx, [choice], None, extra)


async def chat_stream(ctx: RequestContext) -> AsyncIterator[str]:
    """The chunks of a chat completion's choice, opening with the assistant role."""
    yield _chat_chunk(ctx, {"role": "assistant", "content": ""})
    async for delta in _deltas(ctx):
        yield _chat_chunk(ctx, {"content": delta})
    result = finished(ctx.job)
    if result is not None:
        yield await _ending(ctx, result, result.finish_reason)


async def chat_tool_stream(ctx: RequestContext) -> AsyncIterator[str]:
    """The chunks of a chat completion's choice whose answer may call tools: text passes as
    it comes until a call may be starting; the calls follow whole, in one `delta.tool_calls`,
    when the answer has ended (a required call: nothing but the calls), finish_reason
    `tool_calls`. An answer whose call does not parse ends as text."""
    stream = None if ctx.forced_tools else ToolStream(ctx.tool_parser)
    yield _chat_chunk(ctx, {"role": "assistant", "content": ""})
    async for delta in _deltas(ctx):
        piece = delta if stream is None else stream.push(delta)
        if piece and stream is not None:
            yield _chat_chunk(ctx, {"content": piece})
    result = finished(ctx.job)
    if result is None:
        return
    if stream is None:
        calls = forced_calls(result.text)
        rest = "" if calls else result.text
    else:
        rest, calls = stream.finish()
        calls = _allowed_calls(ctx, calls)
    if rest:
        yield _chat_chunk(ctx, {"content": rest})
    if calls:
        yield _chat_chunk(ctx, {"tool_calls": _call_items(calls, streamed=True)})
    yield await _ending(ctx, result, "tool_calls" if calls else result.finish_reason)


async def fixed_chat_stream(ctx: RequestContext, text: str) -> AsyncIterator[str]:
    """A chat stream of an answer given without generation (a refusal, no source), in each
    of the `n` choices, with the request's citations where it has them."""
    with_usage = ctx.body.include_usage()
    extra = {"citations": ctx.citations} if ctx.citations is not None else None
    for i in range(ctx.body.n):
        choice = replace(ctx, choice=i)
        yield _chat_chunk(choice, {"role": "assistant", "content": ""})
        yield _chat_chunk(choice, {"content": text})
        yield _chat_chunk(choice, {}, "stop", None if with_usage or i else extra)
    if with_usage:
        zero = p.Usage(prompt_tokens=0, completion_tokens=0, total_tokens=0)
        yield _frame(p.ChatCompletionChunk, ctx, [], zero, extra)
    yield "data: [DONE]\n\n"


async def completion_stream(ctx: RequestContext) -> AsyncIterator[str]:
    """The chunks of a text completion's choice."""
    async for delta in _deltas(ctx):
        yield _completion_chunk(ctx, delta, None)
    result = finished(ctx.job)
    if result is not None:
        valid = ctx.schema_valid(result.text)
        yield _completion_chunk(ctx, "", result.finish_reason, valid)


def _completion_chunk(
    ctx: RequestContext, text: str, finish: str | None, valid: bool | None = None
) -> str:
    choice = p.CompletionChoice(
        index=ctx.choice, text=text, finish_reason=finish, schema_valid=valid
    )
    return _frame(p.Completion, ctx, [choice])
