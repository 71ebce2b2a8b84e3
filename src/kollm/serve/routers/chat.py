"""`POST /v1/chat/completions`: the domain guard, the version's prompt format, then generation
(streamed or not)."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Request

from kollm.engines.base import Generation
from kollm.serve import protocol as p
from kollm.serve.deps import GUARD, state
from kollm.serve.generation import chat_response, chat_stream, usage

router = APIRouter()


@router.post("/v1/chat/completions", dependencies=GUARD)
async def chat(body: p.ChatCompletionRequest, request: Request):
    """OpenAI's chat completions, streamed or not."""
    service = state(request).generation
    started = time.perf_counter()
    served, adapter = service.find(body.model)
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    rid = p.new_id("chatcmpl")
    user_text = " ".join(m["content"] for m in messages if m["role"] == "user")
    if served.guard is not None and not await asyncio.to_thread(
        served.guard.allows, user_text, served.engine
    ):
        state(request).manager.metrics.off_domain.labels(served.model_id).inc()
        result = Generation(served.guard.refusal, 0, 0, "stop")
        return chat_response(rid, body.model, served, result, usage(result))
    params = service.params(body, body.max_completion_tokens or body.max_tokens)
    job = service.submit(served, served.prompt_for(messages), params, adapter, body.stream)
    if body.stream:
        stream = chat_stream(rid, body.model, served, job, request, body.include_usage())
        return service.stream_response("chat", rid, served, body, job, stream, started)
    result = await service.wait(request, served, job)
    await service.record("chat", rid, served, body, result, started)
    return chat_response(rid, body.model, served, result, usage(result))
