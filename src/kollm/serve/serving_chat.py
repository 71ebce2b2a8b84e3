"""`ChatServing`: a chat completion from its parsed body to its logged answer, after vLLM's
OpenAIServingChat: the domain guard, retrieval when the request or the server names a
collection (the context fitted to the model), the version's prompt format, tokenised once,
then generation, answered as JSON or as an SSE stream; the citations are computed once, for
the answer and the request log alike."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from kollm.engines.base import Generation
from kollm.prompts import Messages
from kollm.serve import protocol as p
from kollm.serve.frames import chat_response, chat_stream, fixed_chat_stream
from kollm.serve.retrieval import RagService, Retrieved
from kollm.serve.service import ServedModel
from kollm.serve.serving_engine import RequestContext, ServingEngine


class ChatServing(ServingEngine):
    def __init__(self, *args, rag: RagService, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.rag = rag

    async def create_chat_completion(self, body: p.ChatCompletionRequest, raw: Request):
        """OpenAI's chat completion for `body`: a JSON response, or a streamed one."""
        ctx = self.context("chat", body, raw, "chatcmpl")
        ctx.messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        self.check_chars(ctx.served, sum(len(m["content"]) for m in ctx.messages), "messages")
        if not await self._allowed(ctx):
            return self._fixed(ctx, ctx.served.guard.refusal)
        await self._retrieve(ctx)
        if ctx.retrieved is not None and not ctx.retrieved.hits:
            return await self._no_source(ctx)
        ctx.params = self.params(ctx, body.max_completion_tokens or body.max_tokens)
        await self._encode(ctx)
        if body.stream:
            self.submit(ctx, True)
            return self.stream_response(ctx, chat_stream(ctx))
        results = await self.generate_n(ctx, body.n, "messages")
        ctx.cite(results[0].text)
        await self.record(ctx, results[0])
        return chat_response(ctx, *results)

    async def _allowed(self, ctx: RequestContext) -> bool:
        """Whether the model's domain guard lets the user turns through (counted if not)."""
        guard = ctx.served.guard
        if guard is None:
            return True
        text = " ".join(_user_turns(ctx.messages))
        if await asyncio.to_thread(guard.allows, text, ctx.served.engine):
            return True
        self.manager.metrics.off_domain.labels(ctx.served.model_id).inc()
        return False

    async def _retrieve(self, ctx: RequestContext) -> None:
        """The chunks for the last user turn, from the collection the request or the server
        names (none: no retrieval)."""
        collection = self.rag.collection_for(ctx.body.rag)
        if collection is None:
            return
        users = _user_turns(ctx.messages)
        question = users[-1] if users else ""
        ctx.retrieved = await self.rag.retrieve(collection, question, ctx.body.rag)
        self.manager.metrics.rag_requests.labels(ctx.served.model_id).inc()

    async def _no_source(self, ctx: RequestContext) -> Response:
        """Nothing retrieved to stand on: say so rather than guess (logged, citing nothing)."""
        self.manager.metrics.rag_no_source.labels(ctx.served.model_id).inc()
        text = self.rag.settings.no_source
        ctx.citations = []
        await self.record(ctx, Generation(text, 0, 0, "stop"))
        return self._fixed(ctx, text)

    @staticmethod
    def _fixed(ctx: RequestContext, text: str) -> Response:
        """An answer given without generation, as JSON or as a stream, as the request asked."""
        if ctx.body.stream:
            stream = fixed_chat_stream(ctx, text)
            return StreamingResponse(stream, media_type="text/event-stream")
        return chat_response(ctx, *[Generation(text, 0, 0, "stop")] * ctx.body.n)

    async def _encode(self, ctx: RequestContext) -> None:
        """The prompt and its token ids, tokenised once: the ids that fitted the retrieved
        context are the ones checked against the context and run by the engine."""
        served = ctx.served
        if ctx.retrieved is not None:
            retrieved, max_new = ctx.retrieved, ctx.params.max_new_tokens
            ctx.prompt, ctx.prompt_ids = await self.templated(
                lambda: fit(retrieved, ctx.messages, served, max_new)
            )
            self.check_chars(served, len(ctx.prompt), "messages")
        else:
            ctx.prompt = await self.prompt(served, ctx.messages)
            ctx.prompt_ids = await self.tokenize(served, ctx.prompt, "messages")


def _user_turns(messages: Messages) -> list[str]:
    return [m["content"] for m in messages if m["role"] == "user"]


def fit(
    retrieved: Retrieved, messages: Messages, served: ServedModel, max_new_tokens: int
) -> tuple[str, list[int]]:
    """The context prompt and its token ids, with as many of the retrieved chunks, best first,
    as fit the model's context with max_tokens (the last one cut short if it must); the chunks
    left out are not cited either. A prompt that fits as retrieved (the usual case) is
    tokenised once; one that no cut can fit goes whole to the length check (413)."""
    budget = served.engine.context_length - max_new_tokens

    def encode(turns: Messages) -> tuple[str, list[int]]:
        prompt = served.prompt_for(turns)
        return prompt, served.engine.tokenize(prompt)

    prompt, ids = encode(retrieved.messages(messages))
    if len(ids) <= budget or len(encode(messages)[1]) > budget:
        return prompt, ids
    while len(ids) > budget and _shorten(retrieved):
        prompt, ids = encode(retrieved.messages(messages))
    return prompt, ids


def _shorten(retrieved: Retrieved) -> bool:
    """Drop the worst chunk; with one left, cut it to two thirds. False when nothing useful is
    left to cut (the length check answers 413)."""
    if len(retrieved.hits) > 1:
        retrieved.hits = retrieved.hits[:-1]
        return True
    (hit,) = retrieved.hits
    if len(hit.text) < 40:
        return False
    text = hit.text[: len(hit.text) * 2 // 3]
    retrieved.hits = [replace(hit, text=text, end=hit.start + len(text))]
    return True
