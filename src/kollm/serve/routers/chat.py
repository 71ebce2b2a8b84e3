"""`POST /v1/chat/completions`: parsed here, served by `ChatServing` (serving_chat.py)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from kollm.serve import protocol as p
from kollm.serve.deps import GUARD, state

router = APIRouter()


@router.post("/v1/chat/completions", dependencies=GUARD)
async def chat(body: p.ChatCompletionRequest, request: Request):
    """OpenAI's chat completions, streamed or not (with citations when retrieval is on)."""
    return await state(request).chat.create_chat_completion(body, request)
