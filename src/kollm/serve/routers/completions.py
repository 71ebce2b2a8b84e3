"""`POST /v1/completions`: the prompt as given, no template."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request

from kollm.serve import protocol as p
from kollm.serve.deps import GUARD, state
from kollm.serve.generation import completion_stream, usage

router = APIRouter()


@router.post("/v1/completions", dependencies=GUARD)
async def completions(body: p.CompletionRequest, request: Request):
    """OpenAI's text completions, streamed or not."""
    service = state(request).generation
    started = time.perf_counter()
    served, adapter = service.find(body.model)
    rid = p.new_id("cmpl")
    params = service.params(body, body.max_tokens)
    job = service.submit(served, body.prompt_text(), params, adapter, body.stream)
    if body.stream:
        stream = completion_stream(rid, body.model, served, job, request, body.include_usage())
        return service.stream_response("completions", rid, served, body, job, stream, started)
    result = await service.wait(request, served, job)
    await service.record("completions", rid, served, body, result, started)
    choice = p.CompletionChoice(text=result.text, finish_reason=result.finish_reason)
    return p.Completion(
        id=rid,
        created=p.now(),
        model=body.model,
        choices=[choice],
        usage=usage(result),
        model_version=served.version,
    )
