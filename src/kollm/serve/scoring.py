"""Token log-probabilities for `/v1/completions` with `echo` and `logprobs`, in OpenAI's legacy
shape: what lm-evaluation-harness's `local-completions` reads to score multiple choice (it
sends context + continuation as token ids with `echo: true, logprobs: 1, max_tokens: 1` and
sums the continuation's logprobs). A server that answers without them makes lm-eval score at
chance; here they come from the engine's own forward pass, or the request is refused."""

from __future__ import annotations

import asyncio

from kollm.engines.base import Engine
from kollm.serve import protocol as p


def continuation_ids(engine: Engine, text: str) -> list[int]:
    """The generated text's ids, without the special tokens a tokenizer puts at a start."""
    if engine.tokenizer is not None:  # a loaded engine's: the protocol declares it
        return engine.tokenizer(text, add_special_tokens=False)["input_ids"]
    return engine.tokenize(text)


def logprobs(
    engine: Engine,
    ids: list[int],
    generated: list[int],
    top_n: int,
    echo: bool,
    adapter: str | None = None,
    offset: int = 0,
) -> p.CompletionLogprobs:
    """The logprobs of prompt + generated tokens (all of them with `echo`, else the generated
    ones), `top_n` alternatives each; text offsets count from `offset`."""
    sequence = ids + generated
    scores = _score(engine, sequence, top_n, adapter)
    start = 0 if echo else len(ids)
    tokens = [engine.decode([t]) for t in sequence[start:]]
    tops = None
    if top_n and scores.top is not None:
        tops = []
        for alternatives in scores.top[start:]:
            if alternatives is None:
                tops.append(None)
                continue
            shown: dict[str, float] = {}
            for token_id, value in alternatives.items():  # likeliest first: a key two ids
                shown.setdefault(engine.decode([token_id]), value)  # share keeps the higher
            tops.append(shown)
    offsets, at = [], offset
    for token in tokens:
        offsets.append(at)
        at += len(token)
    return p.CompletionLogprobs(
        tokens=tokens,
        token_logprobs=scores.logprobs[start:],
        top_logprobs=tops,
        text_offset=offsets,
    )


def _score(engine: Engine, sequence: list[int], top_n: int, adapter: str | None):
    kwargs = {"adapter": adapter} if adapter is not None else {}
    (scores,) = engine.score([sequence], top_n, **kwargs)
    return scores


async def chat_logprobs(
    engine: Engine, ids: list[int], text: str, top_n: int, adapter: str | None = None
) -> p.ChatLogprobs:
    """OpenAI's chat logprobs of the answer `text` to the prompt `ids`: each of its tokens'
    log-probability under the model (before temperature, as vLLM gives them) with `top_n`
    alternatives, from one scoring pass in a worker thread."""
    return await asyncio.to_thread(_chat_logprobs, engine, ids, text, top_n, adapter)


def _chat_logprobs(
    engine: Engine, ids: list[int], text: str, top_n: int, adapter: str | None
) -> p.ChatLogprobs:
    generated = continuation_ids(engine, text) if text else []
    if not generated:
        return p.ChatLogprobs(content=[])
    scores = _score(engine, ids + generated, top_n, adapter)
    content = []
    for at, token_id in enumerate(generated, len(ids)):
        alternatives = (scores.top[at] if scores.top else None) or {}
        top = [_entry(engine, t, v, p.TopLogprob) for t, v in list(alternatives.items())[:top_n]]
        entry = _entry(engine, token_id, scores.logprobs[at], p.ChatTokenLogprob)
        entry.top_logprobs = top
        content.append(entry)
    return p.ChatLogprobs(content=content)


def _entry(engine: Engine, token_id: int, logprob: float, kind):
    token = engine.decode([token_id])
    return kind(token=token, logprob=logprob, bytes=list(token.encode("utf-8")))
