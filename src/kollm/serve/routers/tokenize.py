"""`POST /tokenize` and `POST /detokenize` in vLLM's shapes, so a client (lm-eval, a
gateway counting tokens) can use the served model's own tokenizer."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from kollm.serve import protocol as p
from kollm.serve.deps import GUARD, state

router = APIRouter()


@router.post("/tokenize", dependencies=GUARD)
async def tokenize(body: p.TokenizeRequest, request: Request) -> p.TokenizeResponse:
    """A prompt's token ids; with `messages`, the prompt the server builds for that chat."""
    served, _ = state(request).generation.find(body.model)
    if body.messages is not None:
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        text = served.prompt_for(messages)
    else:
        text = body.prompt or ""
    engine = served.engine
    tokenizer = getattr(engine, "tokenizer", None)
    if tokenizer is not None:
        ids = tokenizer(text, add_special_tokens=body.add_special_tokens)["input_ids"]
    else:
        ids = await asyncio.to_thread(engine.tokenize, text)
    strs = tokenizer.convert_ids_to_tokens(ids) if body.return_token_strs and tokenizer else None
    return p.TokenizeResponse(
        count=len(ids), max_model_len=engine.context_length, tokens=ids, token_strs=strs
    )


@router.post("/detokenize", dependencies=GUARD)
async def detokenize(body: p.DetokenizeRequest, request: Request) -> p.DetokenizeResponse:
    """The text of token ids."""
    served, _ = state(request).generation.find(body.model)
    return p.DetokenizeResponse(prompt=served.engine.decode(body.tokens))
