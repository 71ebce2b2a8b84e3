"""What a conversion (CTranslate2 int8, a GGUF q8_0 or q4) costs against the weights it came
from: both engines read the same conversations, and the figures say how far the converted one
strays.

- `ppl_ratio`: the converted model's perplexity over the reference's on the conversations
  (mean NLL of their tokens, through `score`); 1.0 is no loss.
- `token_agreement`: the share of positions where both put the same token first (greedy
  next-token agreement, from `score`'s top-1).
- `answer_agreement`: the share of whole greedy answers (up to `max_new_tokens`) that are the
  same, on prompts cut before each conversation's last answer.
- `long`: the same over one long multi-turn conversation (several joined, as long as the
  model's context allows), so that drift over a long context shows apart.

An engine without prompt log-probabilities (llama-server) gets no perplexity ratio, and its
next-token agreement comes from one greedy token after a few prefixes; the figures say so
under `not_measured`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from kollm.engines.base import Engine, GenerationParams

Conversation = list[dict[str, str]]
Sample = tuple[str, str]  # (prompt, the answer it was given): a dev record, a conversation's end


@dataclass(frozen=True)
class QualityLimit:
    """The most a served conversion may lose: its perplexity ratio (the worse of the short and
    the long sample) and, when set, the least greedy next-token agreement."""

    max_ppl_ratio: float
    min_token_agreement: float | None = None


def render(turns: Conversation) -> str:
    """A conversation as plain text; the same text reaches both engines, so any rendering
    compares them fairly."""
    return "".join(f"{t['role']}: {t['content']}\n" for t in turns)


def conversation_sample(turns: Conversation) -> Sample:
    """The conversation up to its last assistant turn, and that turn."""
    last = max(i for i, t in enumerate(turns) if t["role"] == "assistant")
    return render(turns[:last]) + "assistant:", f" {turns[last]['content']}\n"


def long_sample(samples: list[Sample]) -> Sample:
    """Several samples as one long one: every earlier one whole, then the last's prompt, so
    its answer is written with all of them in view (a conversation that grew long)."""
    history = "".join(prompt + answer for prompt, answer in samples[:-1])
    return history + samples[-1][0], samples[-1][1]


def _context(engine: Engine) -> int:
    """The tokens the engine reads: its own context length, or its model config's."""
    config = getattr(getattr(engine, "model", None), "config", None)
    own = getattr(config, "max_position_embeddings", None) if config is not None else None
    return int(getattr(engine, "context_length", 0) or own or 2048)


def _scores(reference: Engine, converted: Engine, sequences: list[list[int]]) -> dict:
    """Perplexity ratio and next-token agreement over `sequences`."""
    ref = reference.score(sequences, top_n=1)
    conv = converted.score(sequences, top_n=1)
    nll_ref = nll_conv = 0.0
    agree = positions = 0
    for a, b in zip(ref, conv, strict=True):
        for i in range(1, len(a.logprobs)):
            nll_ref -= a.logprobs[i]
            nll_conv -= b.logprobs[i]
            agree += max(a.top[i], key=a.top[i].get) == max(b.top[i], key=b.top[i].get)
            positions += 1
    if not positions:
        return {}
    gap = (nll_conv - nll_ref) / positions
    ratio = math.exp(min(gap, 50.0)) if math.isfinite(gap) else math.inf
    return {"ppl_ratio": round(ratio, 4), "token_agreement": round(agree / positions, 4)}


def _next_tokens(reference: Engine, converted: Engine, texts: list[list[int]], n=24) -> dict:
    """Next-token agreement without log-probabilities: one greedy token from both engines
    after `n` prefixes spread over the texts (how llama-server's GGUF is compared)."""
    prefixes = [t[:k] for t in texts for k in range(8, len(t), max(1, len(t) // 4))]
    prefixes = prefixes[:: max(1, len(prefixes) // n)][:n]
    if not prefixes:
        return {}
    params = GenerationParams(max_new_tokens=1)
    ref = reference.generate(prefixes, params)
    conv = converted.generate(prefixes, params)
    same = sum(a.text == b.text for a, b in zip(ref, conv, strict=True))
    return {"token_agreement": round(same / len(prefixes), 4), "token_positions": len(prefixes)}


def _answers(reference: Engine, converted: Engine, prompts: list[list[int]], n: int) -> dict:
    params = GenerationParams(max_new_tokens=n)
    ref = reference.generate(prompts, params)
    conv = converted.generate(prompts, params)
    same = sum(a.text.strip() == b.text.strip() for a, b in zip(ref, conv, strict=True))
    return {"answer_agreement": round(same / len(prompts), 4)}


def _measure(reference, converted, samples: list[Sample], max_tokens, max_new_tokens) -> dict:
    # the end of a long text is kept: the part read with the most context before it
    texts = [reference.tokenize(p + a)[-max_tokens:] for p, a in samples]
    prompts = [reference.tokenize(p)[-(max_tokens - max_new_tokens) :] for p, _ in samples]
    figures: dict[str, Any] = {"tokens": sum(len(t) for t in texts)}
    if converted.capabilities.scoring:
        figures.update(_scores(reference, converted, texts))
    else:
        figures.update(_next_tokens(reference, converted, texts))
    figures.update(_answers(reference, converted, prompts, max_new_tokens))
    return figures


def measure_conversion(
    reference: Engine,
    converted: Engine,
    samples: list[Sample],
    long_parts: int = 6,
    max_new_tokens: int = 16,
    max_tokens: int = 256,
) -> dict[str, Any]:
    """The figures of `converted` against `reference` (both loaded), on the first samples
    and on the last `long_parts` joined into one long text (as long as the context allows)."""
    short, rest = samples[:-long_parts], samples[-long_parts:]
    context = min(_context(reference), _context(converted))
    figures = _measure(reference, converted, short, min(max_tokens, context), max_new_tokens)
    figures["long"] = _measure(reference, converted, [long_sample(rest)], context, max_new_tokens)
    figures.update(samples=len(short), long_parts=len(rest), max_new_tokens=max_new_tokens)
    if not converted.capabilities.scoring:
        figures["not_measured"] = (
            f"perplexity: the {converted.name} engine gives no prompt log-probabilities;"
            " next-token agreement from one greedy token at a few positions"
        )
    return figures


def quality_loss(figures: dict[str, Any], limit: QualityLimit) -> str | None:
    """Why the figures are past `limit` (the worse of the short and the long sample), or
    None when they are within it or were not measured."""
    parts = [figures, figures.get("long") or {}]
    ratios = [p["ppl_ratio"] for p in parts if p.get("ppl_ratio") is not None]
    if ratios and not max(ratios) <= limit.max_ppl_ratio:  # NaN fails too
        return f"perplexity ratio {max(ratios):.3f} > serve.max_quality_loss {limit.max_ppl_ratio}"
    agreement = [p["token_agreement"] for p in parts if p.get("token_agreement") is not None]
    floor = limit.min_token_agreement
    if floor is not None and agreement and min(agreement) < floor:
        return f"next-token agreement {min(agreement):.3f} < serve.min_token_agreement {floor}"
    return None
