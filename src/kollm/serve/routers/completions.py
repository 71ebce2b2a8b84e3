"""`POST /v1/completions`: parsed here, served by `CompletionServing`
(serving_completion.py)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from kollm.serve import protocol as p
from kollm.serve.deps import GUARD, state

router = APIRouter()


@router.post("/v1/completions", dependencies=GUARD)
async def completions(body: p.CompletionRequest, request: Request):
    """OpenAI's text completions, streamed or not; several prompts give several choices;
    `echo` and `logprobs` give token log-probabilities (lm-eval's scoring)."""
    return await state(request).completion.create_completion(body, request)
