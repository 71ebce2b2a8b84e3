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

from kollm.engines import ENGINE_SAMPLING
from kollm.engines.base import Generation
from kollm.engines.structured import SchemaError, check_schema
from kollm.prompts import Messages, takes_tools, uses_chat_template
from kollm.serve import protocol as p
from kollm.serve import scoring
from kollm.serve.errors import ApiError
from kollm.serve.frames import (
    chat_response,
    chat_stream,
    chat_tool_stream,
    fixed_chat_stream,
    sse,
)
from kollm.serve.retrieval import RagService, Retrieved
from kollm.serve.serving_engine import RequestContext, ServingEngine
from kollm.serve.tool_parsers import PARSERS, calls_schema, parser_for
from kollm.tasks import decoding_defaults, task_messages


class ChatServing(ServingEngine):
    def __init__(self, *args, rag: RagService, tool_parser: str = "auto", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.rag = rag
        self.tool_parser = None if tool_parser == "auto" else tool_parser

    async def create_chat_completion(self, body: p.ChatCompletionRequest, raw: Request):
        """OpenAI's chat completion for `body`: a JSON response, or a streamed one."""
        ctx = self.context("chat", body, raw, "chatcmpl")
        ctx.messages = [_turn(m) for m in body.messages]
        self.check_chars(ctx.served, sum(len(m["content"]) for m in ctx.messages), "messages")
        self._check_task(ctx)
        refusal = await self._declined(ctx)
        if refusal is not None:
            return self._fixed(ctx, refusal)
        await self._retrieve(ctx)
        if ctx.retrieved is not None and not ctx.retrieved.hits:
            return await self._no_source(ctx)
        body = self._apply_task(ctx)
        ctx.params = self.params(ctx, body.max_completion_tokens or body.max_tokens)
        self._tools(ctx)
        self._template_variables(ctx)
        await self._encode(ctx)
        if body.logprobs:
            self.require(ctx.served, "scoring", "logprobs")
        if body.stream:
            runs = self.submit_n(ctx, True, "messages")
            streams = [chat_tool_stream(run) if ctx.tools else chat_stream(run) for run in runs]
            return self.stream_response(ctx, sse(ctx, runs, streams))
        results = await self.generate_n(ctx, "messages")
        ctx.cite(results[0].text)
        await self.record(ctx, results[0])
        return chat_response(ctx, results, await self._logprobs(ctx, results))

    @staticmethod
    async def _logprobs(ctx: RequestContext, results: list[Generation]) -> list | None:
        """Each choice's chat logprobs, when the request asked for them."""
        if not ctx.body.logprobs:
            return None
        top, engine = ctx.body.top_logprobs or 0, ctx.served.engine
        try:
            return [
                await scoring.chat_logprobs(engine, ctx.prompt_ids, r.text, top, ctx.adapter)
                for r in results
            ]
        except (ValueError, NotImplementedError) as err:
            raise ApiError(400, str(err), "invalid_request_error", "logprobs") from None

    @staticmethod
    def _template_variables(ctx: RequestContext) -> None:
        """chat_template_kwargs reach a chat template only: 400 for a model whose prompt is
        its trained format (or a plain script), which has no variables to set."""
        served = ctx.served
        if ctx.body.chat_template_kwargs and not (
            ctx.tools or uses_chat_template(served.prompt_format, served.engine.tokenizer)
        ):
            raise _bad(
                "chat_template_kwargs",
                f"{served.model_id} builds its prompts in its trained format, not a chat template",
            )

    def _tools(self, ctx: RequestContext) -> None:
        """The request's tools for the chat template and how the answer's calls are read: the
        template's own format, or, when a call is required, a JSON list of calls that
        constrained decoding keeps to (400 naming tools or tool_choice where neither can)."""
        body, served = ctx.body, ctx.served
        if not body.tools_on():
            return
        tokenizer, name = served.engine.tokenizer, served.model_id
        if not takes_tools(served.prompt_format, tokenizer):
            raise _bad("tools", f"the chat template of {name} does not show tools to the model")
        ctx.tools = [t.model_dump(exclude_none=True) for t in body.tools]
        ctx.tool_parser = parser_for(tokenizer.chat_template, self.tool_parser)
        forced = body.forced_tools()
        if forced is None:
            if ctx.tool_parser is None:
                raise _bad(
                    "tools",
                    f"the chat template of {name} teaches no tool-call format kollm reads "
                    f"({', '.join(PARSERS)}); tool_choice 'required' or a named function "
                    "can still be asked",
                )
            return
        self._force_call(ctx, [t.model_dump(exclude_none=True) for t in forced])

    def _force_call(self, ctx: RequestContext, tools: list[dict]) -> None:
        engine = ctx.served.engine
        if ctx.body.response_format is not None and ctx.body.response_format.type != "text":
            raise _bad("response_format", "cannot be asked with a required tool call")
        if "json_schema" not in engine.capabilities.sampling:
            can = ", ".join(n for n, f in ENGINE_SAMPLING.items() if "json_schema" in f)
            raise _bad(
                "tool_choice",
                f"a required call needs constrained decoding, which the {engine.name} engine "
                f"lacks (engines that have it: {can}); use tool_choice 'auto'",
            )
        try:
            # a named function is called once; `required` may call several when parallel
            parallel = ctx.body.parallel_tool_calls and ctx.body.tool_choice == "required"
            schema = check_schema(calls_schema(tools, parallel))
        except SchemaError as err:
            raise _bad("tools", f"a tool's parameters cannot be enforced: {err}") from None
        ctx.params = replace(ctx.params, json_schema=schema)
        ctx.forced_tools = True

    def _check_task(self, ctx: RequestContext) -> None:
        """400 naming `task` for a task that answers from documents when neither the request
        nor the server names a collection."""
        if ctx.task is None or not ctx.task.retrieval:
            return
        if self.rag.collection_for(ctx.body.rag) is None:
            raise _bad(
                "task",
                f"'{ctx.task_name}' answers from documents, but this server has no collection "
                "(serve.rag, --rag) and the request names none (rag.collection)",
            )

    @staticmethod
    def _apply_task(ctx: RequestContext) -> p.ChatCompletionRequest:
        """The task's prompt put around the conversation, and its decoding settings where the
        request set none; the body the rest of the request reads."""
        if ctx.task is not None:
            ctx.messages = task_messages(ctx.task, ctx.messages)
            defaults = decoding_defaults(ctx.task, set(ctx.body.model_fields_set))
            ctx.body = ctx.body.model_copy(update=defaults)
        return ctx.body

    async def _declined(self, ctx: RequestContext) -> str | None:
        """The refusal of the model's domain guard, or of the task's, that does not let the
        user turns through (counted); None when both do."""
        served = ctx.served
        text = " ".join(_user_turns(ctx.messages))
        for guard in (served.guard, served.task_guards.get(ctx.task_name or "")):
            if guard is None:
                continue
            if not await asyncio.to_thread(guard.allows, text, served.engine):
                self.manager.metrics.off_domain.labels(served.model_id).inc()
                return guard.refusal
        return None

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
        return chat_response(ctx, [Generation(text, 0, 0, "stop")] * ctx.body.n)

    async def _encode(self, ctx: RequestContext) -> None:
        """The prompt and its token ids, tokenised once: the ids that fitted the retrieved
        context are the ones checked against the context and run by the engine."""
        served = ctx.served
        if ctx.retrieved is not None:
            retrieved, max_new = ctx.retrieved, ctx.params.max_new_tokens
            ctx.prompt, ctx.prompt_ids = await self.templated(lambda: fit(retrieved, ctx, max_new))
            self.check_chars(served, len(ctx.prompt), "messages")
        else:
            kwargs = ctx.body.chat_template_kwargs
            ctx.prompt = await self.prompt(served, ctx.messages, ctx.tools, kwargs)
            ctx.prompt_ids = await self.tokenize(served, ctx.prompt, "messages")


def _turn(message: p.ChatMessage) -> dict:
    """A message as chat templates take it: tool calls with their arguments as objects, a
    tool's answer with the id of the call it answers."""
    turn = {"role": message.role, "content": message.text()}
    if message.tool_calls:
        turn["tool_calls"] = [call.for_template() for call in message.tool_calls]
    if message.tool_call_id is not None:
        turn["tool_call_id"] = message.tool_call_id
    if message.name is not None:
        turn["name"] = message.name
    return turn


def _bad(param: str, message: str) -> ApiError:
    return ApiError(400, f"{param}: {message}", "invalid_request_error", param)


def _user_turns(messages: Messages) -> list[str]:
    return [m["content"] for m in messages if m["role"] == "user"]


def fit(retrieved: Retrieved, ctx: RequestContext, max_new_tokens: int) -> tuple[str, list[int]]:
    """The context prompt and its token ids, with as many of the retrieved chunks, best first,
    as fit the model's context with max_tokens (the last one cut short if it must); the chunks
    left out are not cited either. A prompt that fits as retrieved (the usual case) is
    tokenised once; one that no cut can fit goes whole to the length check (413)."""
    served, messages = ctx.served, ctx.messages
    budget = served.engine.context_length - max_new_tokens

    def encode(turns: Messages) -> tuple[str, list[int]]:
        prompt = served.prompt_for(turns, ctx.tools, ctx.body.chat_template_kwargs)
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
