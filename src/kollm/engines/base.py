"""The engine protocol (load, generate a batch with optional per-token callbacks, tokenize,
embed, unload) and what every engine shares: stop strings and whole-character streaming."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

# on_token(batch_index, token_id): called for each token an engine produces, in order.
TokenCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class GenerationParams:
    max_new_tokens: int = 64
    num_beams: int = 1
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    no_repeat_ngram_size: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (EOS or a stop string) or "length"


@dataclass
class TokenScores:
    """Log-probabilities of a token sequence: `logprobs[i]` is log P(token i | tokens before),
    None for the first token; `top[i]` the `top_n` likeliest tokens there (id -> logprob)."""

    logprobs: list[float | None]
    top: list[dict[int, float] | None] | None = None


def scores_from_logprobs(ids: list[int], logp, top_n: int) -> TokenScores:
    """TokenScores from a (len(ids), vocab) array of log-probabilities, where row t is the
    distribution of token t + 1 (what a causal LM's forward pass gives)."""
    import numpy as np

    logp = np.asarray(logp, dtype=np.float32)
    chosen = [float(logp[t, ids[t + 1]]) for t in range(len(ids) - 1)]
    top = None
    if top_n:
        best = np.argsort(-logp[:-1], axis=1, kind="stable")[:, :top_n]
        top = [None] + [{int(i): float(logp[t, i]) for i in row} for t, row in enumerate(best)]
    return TokenScores([None, *chosen], top)


def score_each(sequences: list[list[int]], top_n: int, forward) -> list[TokenScores]:
    """TokenScores of each sequence; `forward(ids)` gives its (len, vocab) log-probabilities.
    A sequence of one token has nothing to score."""
    out = []
    for ids in sequences:
        if len(ids) < 2:
            out.append(TokenScores([None] * len(ids), [None] * len(ids) if top_n else None))
        else:
            out.append(scores_from_logprobs(ids, forward(ids), top_n))
    return out


class Engine(Protocol):
    name: str
    context_length: int

    def load(self) -> None: ...

    def generate(
        self, prompts: list[str], params: GenerationParams, on_token: TokenCallback | None = None
    ) -> list[Generation]:
        """One answer per prompt, the prompts run as one batch; `on_token` sees every token."""
        ...

    def tokenize(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def embed(self, texts: list[str]) -> list[list[float]]: ...

    def score(self, sequences: list[list[int]], top_n: int = 0) -> list[TokenScores]:
        """Log-probabilities of each token of each sequence (prompt scoring, as lm-eval asks
        through `echo` and `logprobs`)."""
        ...

    def unload(self) -> None: ...


def adapter_base(model_dir: Path) -> str | None:
    """The base model a LoRA adapter dir was trained on, or None for a full model dir."""
    path = Path(model_dir) / "adapter_config.json"
    return json.loads(path.read_text())["base_model_name_or_path"] if path.exists() else None


def apply_stop(text: str, stop: tuple[str, ...] | list[str]) -> tuple[str, bool]:
    """`text` cut at the first stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class IncrementalDecoder:
    """Turns token ids, one at a time, into text deltas that never split a character.

    Byte-level BPE cuts a Hangul syllable (3 UTF-8 bytes) across tokens; decoding such a prefix
    ends in U+FFFD, so that tail is held back until the next token completes it. A tail that
    could be the start of a stop string is held back too. The deltas join to the text that
    decoding all ids at once gives (cut at the first stop string).
    """

    def __init__(self, decode: Callable[[list[int]], str], stop: tuple[str, ...] = ()) -> None:
        self._decode = decode
        self._stop = tuple(s for s in stop if s)
        self._ids: list[int] = []
        self._sent = 0  # characters of the decoded text already emitted
        self.stopped = False

    def push(self, token_id: int) -> str:
        if self.stopped:
            return ""
        self._ids.append(token_id)
        text = self._decode(self._ids)
        cut, found = apply_stop(text, self._stop)
        if found:
            self.stopped = True
            return self._emit(cut)
        if text.endswith("\ufffd"):
            return ""
        return self._emit(text[: len(text) - self._partial_stop(text)])

    def finish(self) -> str:
        """The rest, once generation has ended."""
        if self.stopped:
            return ""
        text, _ = apply_stop(self._decode(self._ids), self._stop)
        return self._emit(text)

    def _emit(self, upto: str) -> str:
        delta = upto[self._sent :]
        self._sent = max(self._sent, len(upto))
        return delta

    def _partial_stop(self, text: str) -> int:
        """Length of the longest tail of `text` that begins some stop string."""
        return max(
            (k for s in self._stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0
        )


def stream_text(engine: Engine, prompt: str, params: GenerationParams) -> Iterator[str]:
    """Text deltas of one answer, for callers without a batcher (runs generate inline)."""
    decoder = IncrementalDecoder(engine.decode, params.stop)
    pieces: list[str] = []
    engine.generate([prompt], params, on_token=lambda _i, tok: pieces.append(decoder.push(tok)))
    pieces.append(decoder.finish())
    yield from (p for p in pieces if p)
