"""`POST /v1/completions`: the prompt as given (text or token ids), no template; with `echo`
and `logprobs`, token log-probabilities of the prompt and the answer (lm-eval's scoring)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

from fastapi import APIRouter, Request

from kollm.engines.base import Generation
from kollm.serve import protocol as p
from kollm.serve import scoring
from kollm.serve.deps import GUARD, state
from kollm.serve.errors import ApiError
from kollm.serve.generation import completion_stream

router = APIRouter()


async def _choice(service, request, served, adapter, body, params, index: int, prompt):
    """One prompt's choice and its generation."""
    engine = served.engine
    text = scoring.prompt_text(engine, prompt)
    ids = scoring.prompt_ids(engine, prompt)
    if params.max_new_tokens == 0:  # scoring only: nothing is generated
        if len(ids) > engine.context_length:
            raise ApiError(
                413,
                f"prompt of {len(ids)} tokens exceeds the context of {engine.context_length}",
                "invalid_request_error",
                "prompt",
            )
        result = Generation("", len(ids), 0, "length")
    else:
        job = service.submit(served, text, params, adapter, False)
        result = await service.wait(request, served, job)
    lp = None
    if body.logprobs is not None:
        generated = scoring.continuation_ids(engine, result.text) if result.text else []
        offset = 0 if body.echo else len(text)
        try:
            lp = await asyncio.to_thread(
                scoring.logprobs, engine, ids, generated, body.logprobs, body.echo, adapter, offset
            )
        except (ValueError, NotImplementedError) as err:
            raise ApiError(400, str(err), "invalid_request_error", "logprobs") from None
    shown = (text if body.echo else "") + result.text
    choice = p.CompletionChoice(
        index=index, text=shown, logprobs=lp, finish_reason=result.finish_reason
    )
    return choice, result


@router.post("/v1/completions", dependencies=GUARD)
async def completions(body: p.CompletionRequest, request: Request):
    """OpenAI's text completions, streamed or not; several prompts give several choices."""
    service = state(request).generation
    started = time.perf_counter()
    served, adapter = service.find(body.model)
    rid = p.new_id("cmpl")
    params = service.params(body, body.max_tokens)
    if body.max_tokens == 0:
        params = replace(params, max_new_tokens=0)
    prompts = body.prompts()
    if body.stream:
        text = scoring.prompt_text(served.engine, prompts[0])
        job = service.submit(served, text, params, adapter, True)
        stream = completion_stream(rid, body.model, served, job, request, body.include_usage())
        return service.stream_response("completions", rid, served, body, job, stream, started)
    done = [
        await _choice(service, request, served, adapter, body, params, i, prompt)
        for i, prompt in enumerate(prompts)
    ]
    if len(done) == 1:  # a batch of prompts is evaluation traffic: not logged for feedback
        await service.record("completions", rid, served, body, done[0][1], started)
    prompt_tokens = sum(r.prompt_tokens for _, r in done)
    completion_tokens = sum(r.completion_tokens for _, r in done)
    return p.Completion(
        id=rid,
        created=p.now(),
        model=body.model,
        choices=[c for c, _ in done],
        usage=p.Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        ),
        model_version=served.version,
    )
