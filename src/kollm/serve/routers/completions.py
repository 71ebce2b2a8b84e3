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


def _text_and_ids(engine, prompt: str | list[int]) -> tuple[str, list[int]]:
    """A prompt's text and token ids (one of them given, the other made: runs in a thread)."""
    return scoring.prompt_text(engine, prompt), scoring.prompt_ids(engine, prompt)


def _check_prompts(service, served, prompts: list) -> None:
    """400 on a token id outside the vocabulary, 413 on a text too long to tokenise, before
    anything is tokenised or reaches the engine."""
    many = len(prompts) > 1
    for i, prompt in enumerate(prompts):
        if isinstance(prompt, str):
            service.check_chars(served, len(prompt), "prompt")
        else:
            service.check_ids(served, prompt, "prompt", i if many else None)


async def _choice(service, request, served, adapter, body, params, index: int, prompt):
    """One prompt's choice and its generation."""
    engine = served.engine
    text, ids = await asyncio.to_thread(_text_and_ids, engine, prompt)
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
        job = await service.submit(served, text, params, adapter, False, "prompt")
        result = await service.wait(request, served, job)
    lp = None
    if body.logprobs is not None:
        generated = (
            await asyncio.to_thread(scoring.continuation_ids, engine, result.text)
            if result.text
            else []
        )
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
    if body.logprobs is not None:
        service.require(served, "scoring", "logprobs")
    rid = p.new_id("cmpl")
    params = service.params(body, body.max_tokens)
    if body.max_tokens == 0:
        params = replace(params, max_new_tokens=0)
    prompts = body.prompts()
    _check_prompts(service, served, prompts)
    if body.stream:
        text = await asyncio.to_thread(scoring.prompt_text, served.engine, prompts[0])
        job = await service.submit(served, text, params, adapter, True, "prompt")
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
