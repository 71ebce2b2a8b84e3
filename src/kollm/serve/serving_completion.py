"""`CompletionServing`: a text completion from its parsed body to its logged answer, after
vLLM's OpenAIServingCompletion: each prompt as given (a text, tokenised once, or token ids,
used as they are), no template; generation streamed or not; with `echo` and `logprobs`, the
token log-probabilities of the prompt and the answer (lm-eval's scoring)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from fastapi import Request
from fastapi.responses import StreamingResponse

from kollm.engines.base import Generation
from kollm.serve import protocol as p
from kollm.serve import scoring
from kollm.serve.errors import ApiError
from kollm.serve.frames import completion_stream, sse
from kollm.serve.serving_engine import RequestContext, ServingEngine, too_long


class CompletionServing(ServingEngine):
    async def create_completion(
        self, body: p.CompletionRequest, raw: Request
    ) -> p.Completion | StreamingResponse:
        """OpenAI's text completion for `body`; several prompts give several choices."""
        ctx = self.context("completions", body, raw, "cmpl")
        if ctx.task_name is not None:  # a task's prompt is a conversation: chat's
            raise ApiError(
                400,
                f"task: task services ('{ctx.task_name}') answer chat requests; use "
                "/v1/chat/completions",
                "invalid_request_error",
                "task",
            )
        if body.logprobs is not None:
            self.require(ctx.served, "scoring", "logprobs")
        ctx.params = self.params(ctx, body.max_tokens)
        if body.max_tokens == 0:  # scoring only: nothing is generated
            ctx.params = replace(ctx.params, max_new_tokens=0)
        prompts = body.prompts()
        self._check_prompts(ctx, prompts)
        if body.stream:  # one prompt (the protocol refuses more, and echo and logprobs)
            await self._encode(ctx, prompts[0])
            runs = self.submit_n(ctx, True, "prompt")
            streams = [completion_stream(run) for run in runs]
            return self.stream_response(ctx, sse(ctx, runs, streams))
        done = [c for i, prompt in enumerate(prompts) for c in await self._choices(ctx, i, prompt)]
        if len(prompts) == 1:  # a batch of prompts is evaluation traffic: not logged for feedback
            await self.record(ctx, done[0][1])
        return _completion(ctx, done)

    def _check_prompts(self, ctx: RequestContext, prompts: list) -> None:
        """400 on a token id outside the vocabulary or a text too long to tokenise,
        before anything is tokenised or reaches the engine."""
        many = len(prompts) > 1
        for i, prompt in enumerate(prompts):
            if isinstance(prompt, str):
                self.check_chars(ctx.served, len(prompt), "prompt")
            else:
                self.check_ids(ctx.served, prompt, "prompt", i if many else None)

    async def _encode(self, ctx: RequestContext, prompt: str | list[int]) -> None:
        """The prompt being run and its token ids: a text tokenised once, ids kept as given
        (their text, decoded, is what `echo` shows and logprob offsets count from)."""
        engine = ctx.served.engine
        if isinstance(prompt, str):
            ctx.prompt, ctx.prompt_ids = prompt, await asyncio.to_thread(engine.tokenize, prompt)
        else:
            ctx.prompt, ctx.prompt_ids = await asyncio.to_thread(engine.decode, prompt), prompt

    async def _choices(
        self, ctx: RequestContext, index: int, prompt: str | list[int]
    ) -> list[tuple[p.CompletionChoice, Generation]]:
        """One prompt's `n` choices and their generations (the prompts of a request run in
        turn); choice indexes run prompt by prompt, as OpenAI's do."""
        await self._encode(ctx, prompt)
        body = ctx.body
        out = []
        for j, result in enumerate(await self._generate(ctx, body.n)):
            lp = await self._logprobs(ctx, result) if body.logprobs is not None else None
            shown = (ctx.prompt if body.echo else "") + result.text
            finish = result.finish_reason
            choice = p.CompletionChoice(
                index=index * body.n + j,
                text=shown,
                logprobs=lp,
                finish_reason=finish,
                schema_valid=ctx.schema_valid(result.text),
            )
            out.append((choice, result))
        return out

    async def _generate(self, ctx: RequestContext, n: int) -> list[Generation]:
        """The `n` answers to the prompt's ids; with max_tokens 0, none (the prompt is
        scored)."""
        if ctx.params.max_new_tokens > 0:
            return await self.generate_n(ctx, "prompt")
        count, context = len(ctx.prompt_ids), ctx.served.engine.context_length
        if count > context:
            raise too_long(context, count, 0, "prompt")
        return [Generation("", count, 0, "length")] * n

    async def _logprobs(self, ctx: RequestContext, result: Generation) -> p.CompletionLogprobs:
        """The token log-probabilities of the prompt (with echo) and the answer; 400 naming
        `logprobs` when the engine cannot give them for this request."""
        engine, body = ctx.served.engine, ctx.body
        generated = []
        if result.text:
            generated = await asyncio.to_thread(scoring.continuation_ids, engine, result.text)
        offset = 0 if body.echo else len(ctx.prompt)
        args = (engine, ctx.prompt_ids, generated, body.logprobs, body.echo, ctx.adapter, offset)
        try:
            return await asyncio.to_thread(scoring.logprobs, *args)
        except (ValueError, NotImplementedError) as err:
            raise ApiError(400, str(err), "invalid_request_error", "logprobs") from None


def _completion(
    ctx: RequestContext, done: list[tuple[p.CompletionChoice, Generation]]
) -> p.Completion:
    """The completion of every prompt's choice, with the usage they add up to."""
    n = ctx.body.n  # a prompt is counted once, not once a choice
    prompt_tokens = sum(r.prompt_tokens for c, r in done if c.index % n == 0)
    completion_tokens = sum(r.completion_tokens for _, r in done)
    return p.Completion(
        id=ctx.rid,
        created=p.now(),
        model=ctx.body.model,
        choices=[c for c, _ in done],
        usage=p.Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        ),
        model_version=ctx.served.version,
    )
