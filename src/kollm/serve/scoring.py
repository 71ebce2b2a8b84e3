"""Token log-probabilities for `/v1/completions` with `echo` and `logprobs`, in OpenAI's legacy
shape: what lm-evaluation-harness's `local-completions` reads to score multiple choice (it
sends context + continuation as token ids with `echo: true, logprobs: 1, max_tokens: 1` and
sums the continuation's logprobs). A server that answers without them makes lm-eval score at
chance; here they come from the engine's own forward pass, or the request is refused."""

from __future__ import annotations

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
    kwargs = {"adapter": adapter} if adapter is not None else {}
    (scores,) = engine.score([sequence], top_n, **kwargs)
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
