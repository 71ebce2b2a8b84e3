"""`POST /tokenize` and `POST /detokenize` in vLLM's shapes, so a client (lm-eval, a
gateway counting tokens) can use the served model's own tokenizer."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from kollm.serve import protocol as p
from kollm.serve.deps import GUARD, state
from kollm.tasks import task_messages

router = APIRouter()


def _tokens(engine, text: str, body: p.TokenizeRequest) -> tuple[list[int], list[str] | None]:
    """The ids of `text` and, if asked, their token strings (runs in a worker thread)."""
    tokenizer = engine.tokenizer
    if tokenizer is None:  # not loaded yet
        return engine.tokenize(text), None
    ids = tokenizer(text, add_special_tokens=body.add_special_tokens)["input_ids"]
    return ids, tokenizer.convert_ids_to_tokens(ids) if body.return_token_strs else None


@router.post("/tokenize", dependencies=GUARD)
async def tokenize(body: p.TokenizeRequest, request: Request) -> p.TokenizeResponse:
    """A prompt's token ids; with `messages`, the prompt the server builds for that chat (with
    `MODEL/TASK`, the task's prompt around it)."""
    service = state(request).serving
    model, task = service.split_task(body)
    served, _ = service.find(model)
    if body.messages is not None:
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        service.check_chars(served, sum(len(m["content"]) for m in messages), "messages")
        if task is not None:
            messages = task_messages(service.find_task(served, task), messages)
        text = await service.prompt(served, messages)
    else:
        text = body.prompt or ""
        service.check_chars(served, len(text), "prompt")
    engine = served.engine
    ids, strs = await asyncio.to_thread(_tokens, engine, text, body)
    return p.TokenizeResponse(
        count=len(ids), max_model_len=engine.context_length, tokens=ids, token_strs=strs
    )


@router.post("/detokenize", dependencies=GUARD)
async def detokenize(body: p.DetokenizeRequest, request: Request) -> p.DetokenizeResponse:
    """The text of token ids; 400 naming the first id outside the vocabulary."""
    service = state(request).serving
    served, _ = service.find(body.model)
    service.check_ids(served, body.tokens, "tokens")
    return p.DetokenizeResponse(prompt=await asyncio.to_thread(served.engine.decode, body.tokens))
