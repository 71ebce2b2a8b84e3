"""The engine protocol (load, generate a batch with optional per-token callbacks, tokenize,
embed, unload) and what every engine shares: stop strings and whole-character streaming."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

# on_token(batch_index, token_id): called for each token an engine produces, in order.
TokenCallback = Callable[[int, int], None]

# A prompt is its text, or its token ids as the engine's own `tokenize` gives them: the server
# tokenises a prompt once (to check it fits the context) and hands those ids on, used as is.
Prompt = str | list[int]


class RequestRejected(ValueError):
    """The engine's upstream server refused this request's settings (a 4xx from vLLM or
    llama-server): the client's error, answered as a 400 with the upstream's message, not
    the server's."""


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
    top_k: int = 0  # 0: off
    min_p: float = 0.0
    presence_penalty: float = 0.0  # OpenAI's: minus this from a token's logit once it occurred
    frequency_penalty: float = 0.0  # OpenAI's: minus this times the times it occurred
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit)
    json_schema: str | None = None  # the answer must be JSON valid under it (constrained)


SAMPLING_FIELDS = (
    "top_k",
    "min_p",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "json_schema",
    "seed",
)
"""The decoding settings beyond temperature, top_p, seed and stop that an engine may or may
not honour; each engine declares the ones it does (`Capabilities.sampling`)."""


ENGINE_SAMPLING = {
    "transformers": frozenset(SAMPLING_FIELDS),
    "vllm": frozenset(SAMPLING_FIELDS),
    "llamacpp": frozenset(SAMPLING_FIELDS),
    # generate_batch has no logits hook: no min_p, OpenAI penalties, biases or constrained
    # decoding (json_schema)
    "ctranslate2": frozenset({"top_k", "repetition_penalty"}),
    # and its random seed is its worker threads' own: a seeded sample is not reproducible
}
"""Each engine's `Capabilities.sampling`, in one place so that a refusal can name the engines
that would honour the setting."""


def sampling_used(params: GenerationParams) -> list[str]:
    """The SAMPLING_FIELDS that `params` sets away from their defaults (off); a seed counts
    only when sampling (greedy answers need none)."""
    default = GenerationParams()
    used = [f for f in SAMPLING_FIELDS if getattr(params, f) != getattr(default, f)]
    return [f for f in used if f != "seed" or params.do_sample]


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


@dataclass(frozen=True)
class Capabilities:
    """What an engine can do, declared by the engine so the server need not probe for it."""

    self_scheduling: bool = False
    """It batches its own sequences as they come (continuous batching: vLLM, llama.cpp): the
    server hands each request over when it arrives instead of running static batches."""
    max_concurrency: int = 8
    """Requests a self-scheduling engine takes in flight by default (vLLM's max_num_seqs,
    llama.cpp's --parallel); more wait in the server's queue."""
    uneven_prompt_cost: bool = False
    """A batch pays a decoding step per prompt token past its shortest prompt (CTranslate2's
    decoder-only models), so the batcher groups waiting requests by prompt length."""
    adapters: bool = False
    """LoRA adapters given at start are picked per request by name (`generate(adapter=)`)."""
    runtime_adapters: bool = False
    """Adapters load and unload while serving (`load_adapter`, `unload_adapter`)."""
    scoring: bool = True
    """Prompt log-probabilities (`score`), as lm-eval asks through echo and logprobs."""
    embeddings: bool = True
    """Text embeddings (`embed`)."""
    cancellation: bool = False
    """A sequence stops when its request's `cancel` event is set (the client left)."""
    sampling: frozenset[str] = frozenset(SAMPLING_FIELDS)
    """The SAMPLING_FIELDS it honours; a request setting another is refused by name."""


class Engine(Protocol):
    name: str
    capabilities: Capabilities
    context_length: int
    # The ids generation stops on (`end_ids`: generation_config's eos ids and the chat
    # template's end of turn); set by load.
    end_ids: tuple[int, ...]
    # Token ids the tokenizer and the model's embedding both accept: 0 .. vocab_size - 1
    # (None before load). The server refuses any other id before it reaches the engine.
    vocab_size: int | None
    # The Hugging Face tokenizer the engine tokenises with (None before load): the server
    # builds chat prompts with its template and shows /tokenize's token strings from it.
    tokenizer: Any

    def load(self) -> None: ...

    def generate(
        self,
        prompts: list[Prompt],
        params: GenerationParams,
        on_token: TokenCallback | None = None,
    ) -> list[Generation]:
        """One answer per prompt, the prompts run as one batch; `on_token` sees every token.
        A prompt given as token ids (from `tokenize`) is used as it is, not tokenised again.
        Engines with `capabilities.adapters` take `adapter=NAME`, and those with
        `capabilities.cancellation` take `cancel=` (a threading.Event set when the request is
        abandoned: the sequence stops, with finish_reason "cancelled")."""
        ...

    def tokenize(self, text: str) -> list[int]:
        """The token ids `generate` runs for the prompt `text` (before any cut to the context)."""
        ...

    def decode(self, ids: list[int]) -> str: ...

    def embed(self, texts: list[str]) -> list[list[float]]: ...

    def score(self, sequences: list[list[int]], top_n: int = 0) -> list[TokenScores]:
        """Log-probabilities of each token of each sequence (prompt scoring, as lm-eval asks
        through `echo` and `logprobs`)."""
        ...

    def health(self) -> dict:
        """What /health shows of the engine ({} when there is nothing to say; an engine that
        runs a server process says whether it is up: `{"llama_server": "down", ...}`)."""
        ...

    def unload(self) -> None: ...


def adapter_base(model_dir: Path) -> str | None:
    """The base model a LoRA adapter dir was trained on, or None for a full model dir."""
    path = Path(model_dir) / "adapter_config.json"
    return json.loads(path.read_text())["base_model_name_or_path"] if path.exists() else None


# Tokens that close a turn in chat templates (Llama-3, Gemma, ChatML, EXAONE, Phi-3,
# Command-R): a model ends its answer with one even where tokenizer.eos_token is another.
END_OF_TURN_TOKENS = (
    "<|eot_id|>",
    "<|eom_id|>",
    "<end_of_turn>",
    "<|im_end|>",
    "[|endofturn|]",
    "<|end|>",
    "<|END_OF_TURN_TOKEN|>",
)


def end_ids(model_dir: Path, tokenizer) -> tuple[int, ...]:
    """Every token id that ends an answer: the tokenizer's EOS, the eos_token_id (an int or a
    list) of generation_config.json (or else config.json) of the model or an adapter's base,
    and the end-of-turn tokens the chat template writes that the tokenizer holds as added
    tokens. In that order, each once."""
    ids = [tokenizer.eos_token_id, *_declared_eos(Path(model_dir))]
    added = tokenizer.get_added_vocab()
    template = tokenizer.chat_template or ""
    template = " ".join(template.values()) if isinstance(template, dict) else template
    ids += [added[t] for t in END_OF_TURN_TOKENS if t in added and t in template]
    return tuple(dict.fromkeys(int(i) for i in ids if i is not None))


def cut_at_end(ids: list[int], ends: tuple[int, ...]) -> tuple[list[int], bool]:
    """`ids` up to the first end id (which is not part of the answer), and whether one came."""
    at = next((i for i, token in enumerate(ids) if token in ends), None)
    return (ids, False) if at is None else (ids[:at], True)


def _declared_eos(model_dir: Path) -> list[int]:
    """The eos_token_id the model's configs declare, as a list (empty when none does)."""
    base = Path(adapter_base(model_dir) or model_dir)
    if (base / "generation_config.json").is_file():
        from transformers import GenerationConfig

        value = GenerationConfig.from_pretrained(str(base)).eos_token_id
    elif (base / "config.json").is_file():
        config = json.loads((base / "config.json").read_text(encoding="utf-8"))
        # a multimodal model (Gemma 3) keeps its language model's ids in text_config
        value = config.get("eos_token_id", (config.get("text_config") or {}).get("eos_token_id"))
    else:
        value = None
    return list(value) if isinstance(value, list | tuple) else [value]


def vocab_limit(tokenizer, config=None) -> int:
    """How many token ids both the tokenizer and the model accept: the smaller of the
    tokenizer's (with added tokens) and the embedding's (`config.vocab_size`), where known. An
    id past the embedding crashes CTranslate2; one past the tokenizer cannot be decoded."""
    sizes = [len(tokenizer)]
    if config is not None and getattr(config, "vocab_size", None):
        sizes.append(int(config.vocab_size))
    return min(sizes)


def prefix_function(s: str) -> list[int]:
    """KMP's failure function: `f[i]` is the length of the longest proper prefix of
    `s[: i + 1]` that is also its suffix."""
    f = [0] * len(s)
    k = 0
    for i in range(1, len(s)):
        while k and s[i] != s[k]:
            k = f[k - 1]
        if s[i] == s[k]:
            k += 1
        f[i] = k
    return f


def longest_prefix_at_end(text: str, stop: str, failure: list[int]) -> int:
    """Length of the longest tail of `text` that is a proper prefix of `stop` (`failure` is
    `prefix_function(stop)`): one pass of the KMP automaton over the last len(stop) - 1
    characters, so linear in the stop's length (checking each prefix with `endswith` is
    quadratic: a 240,000-character stop stalled the engine thread for seconds a token)."""
    k = 0  # the tail is shorter than `stop`, so k stays below len(stop)
    for c in text[max(0, len(text) - len(stop) + 1) :]:
        while k and stop[k] != c:
            k = failure[k - 1]
        if stop[k] == c:
            k += 1
    return k


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
        # Per stop string: its KMP failure function and the characters a held-back tail can
        # end with (a token ending in none of them holds nothing back for that stop).
        self._prefixes = [(s, prefix_function(s), set(s[:-1])) for s in self._stop if len(s) > 1]
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
        """Length of the longest tail of `text` that begins some stop string (and is shorter
        than it: a whole stop string is cut by `apply_stop`)."""
        if not text:
            return 0
        return max(
            (
                longest_prefix_at_end(text, s, failure)
                for s, failure, ends in self._prefixes
                if text[-1] in ends
            ),
            default=0,
        )


def stream_text(engine: Engine, prompt: str, params: GenerationParams) -> Iterator[str]:
    """Text deltas of one answer, for callers without a batcher (runs generate inline)."""
    decoder = IncrementalDecoder(engine.decode, params.stop)
    pieces: list[str] = []
    engine.generate([prompt], params, on_token=lambda _i, tok: pieces.append(decoder.push(tok)))
    pieces.append(decoder.finish())
    yield from (p for p in pieces if p)
