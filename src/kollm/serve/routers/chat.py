"""`POST /v1/chat/completions`: the domain guard, retrieval when the request or the server
names a collection, the version's prompt format, then generation (streamed or not)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

from fastapi import APIRouter, Request

from kollm.engines.base import Generation
from kollm.serve import protocol as p
from kollm.serve.deps import GUARD, state
from kollm.serve.generation import chat_response, chat_stream, fixed_chat_stream, usage
from kollm.serve.retrieval import Retrieved

router = APIRouter()


def _fixed(rid, body: p.ChatCompletionRequest, served, text: str, citations=None):
    """An answer given without generation, as JSON or as a stream, as the request asked."""
    if body.stream:
        from fastapi.responses import StreamingResponse

        stream = fixed_chat_stream(rid, body.model, served, text, body.include_usage(), citations)
        return StreamingResponse(stream, media_type="text/event-stream")
    result = Generation(text, 0, 0, "stop")
    return chat_response(rid, body.model, served, result, usage(result), citations)


def _fit(retrieved: Retrieved, messages, served, params):
    """The context prompt with as many of the retrieved chunks, best first, as fit the
    model's context with max_tokens (the last one cut short if it must); the chunks left out
    are not cited either."""
    bare = len(served.engine.tokenize(served.prompt_for(messages)))
    if bare + params.max_new_tokens > served.engine.context_length:
        return retrieved.messages(messages)  # no cut makes it fit: the length check says 413
    while True:
        with_context = retrieved.messages(messages)
        n = len(served.engine.tokenize(served.prompt_for(with_context)))
        if n + params.max_new_tokens <= served.engine.context_length:
            return with_context
        if len(retrieved.hits) > 1:
            retrieved.hits = retrieved.hits[:-1]
            continue
        (hit,) = retrieved.hits
        if len(hit.text) < 40:  # nothing useful left to cut: the length check answers 413
            return with_context
        text = hit.text[: len(hit.text) * 2 // 3]
        retrieved.hits = [replace(hit, text=text, end=hit.start + len(text))]


@router.post("/v1/chat/completions", dependencies=GUARD)
async def chat(body: p.ChatCompletionRequest, request: Request):
    """OpenAI's chat completions, streamed or not."""
    server = state(request)
    service = server.generation
    started = time.perf_counter()
    served, adapter = service.find(body.model)
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    service.check_chars(served, sum(len(m["content"]) for m in messages), "messages")
    rid = p.new_id("chatcmpl")
    users = [m["content"] for m in messages if m["role"] == "user"]
    if served.guard is not None and not await asyncio.to_thread(
        served.guard.allows, " ".join(users), served.engine
    ):
        server.manager.metrics.off_domain.labels(served.model_id).inc()
        return _fixed(rid, body, served, served.guard.refusal)
    retrieved: Retrieved | None = None
    collection = server.rag.collection_for(body.rag)
    if collection is not None:
        retrieved = await server.rag.retrieve(collection, users[-1] if users else "", body.rag)
        server.manager.metrics.rag_requests.labels(served.model_id).inc()
        if not retrieved.hits:  # nothing to stand on: say so rather than guess
            server.manager.metrics.rag_no_source.labels(served.model_id).inc()
            text = server.rag.settings.no_source
            result = Generation(text, 0, 0, "stop")
            await service.record("chat", rid, served, body, result, started, retrieved.log(None))
            return _fixed(rid, body, served, text, [])
    params = service.params(body, body.max_completion_tokens or body.max_tokens)
    fit = (lambda m: _fit(retrieved, m, served, params)) if retrieved is not None else None
    prompt = await service.prompt(served, messages, fit)
    job = await service.submit(served, prompt, params, adapter, body.stream)
    if body.stream:
        cite = retrieved.citations if retrieved else None
        stream = chat_stream(rid, body.model, served, job, request, body.include_usage(), cite)
        log = retrieved.log if retrieved else None
        return service.stream_response("chat", rid, served, body, job, stream, started, log)
    result = await service.wait(request, served, job)
    await service.record(
        "chat",
        rid,
        served,
        body,
        result,
        started,
        retrieved.log(result.text) if retrieved else None,
    )
    citations = retrieved.citations(result.text) if retrieved else None
    return chat_response(rid, body.model, served, result, usage(result), citations)
