"""The CTranslate2 engine, the fast CPU default: int8 by default, converted once and cached.

The conversion lands beside the artifact in `<artifact>.ct2-<quantization>-<sha12>/`, keyed
by the weights' sha256, so a new version converts anew and a restart does not. A LoRA adapter
dir is merged into its base first. Decoder-only models (Llama, Qwen, Mistral, GPT-2) use
`Generator`; BART/T5 use `Translator`. Tokens reach `on_token` through `generate_batch`'s
per-step callback, so a streamed answer is batched like any other.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import uuid
from collections import deque
from pathlib import Path

from kollm.artifacts import tree_sha256
from kollm.engines.base import (
    ENGINE_SAMPLING,
    Capabilities,
    Generation,
    GenerationParams,
    Prompt,
    TokenCallback,
    TokenScores,
    adapter_base,
    apply_stop,
    cut_at_end,
    end_ids,
    score_each,
    vocab_limit,
)
from kollm.remote import dir_kwargs

log = logging.getLogger(__name__)


def converted_dir(model_dir: Path, quantization: str, sha256: str) -> Path:
    """Where a conversion of `model_dir` is cached, keyed by its weights' sha256."""
    return model_dir.with_name(f"{model_dir.name}.ct2-{quantization}-{sha256[:12]}")


def config_compat() -> None:
    """Config attributes transformers 5 dropped that CTranslate2's loaders read:
    `BartConfig.normalize_before` (BART is post-norm, so the old default, False, is right) and
    `GPTNeoXConfig.rotary_pct` (Polyglot-ko's partial rotary share, which transformers 5 keeps
    as `rope_parameters["partial_rotary_factor"]`) and GPT-NeoX's `embed_out` (now `lm_head`)."""
    from transformers import BartConfig, GPTNeoXConfig

    if "normalize_before" not in vars(BartConfig):
        BartConfig.normalize_before = False
    from transformers import GPTNeoXForCausalLM

    if not hasattr(GPTNeoXForCausalLM, "embed_out"):  # renamed lm_head in transformers 5
        GPTNeoXForCausalLM.embed_out = property(lambda self: self.get_output_embeddings())
    if "rotary_pct" not in vars(GPTNeoXConfig):
        GPTNeoXConfig.rotary_pct = property(
            lambda self: (getattr(self, "rope_parameters", None) or {}).get(
                "partial_rotary_factor", 1.0
            )
        )


class NoConverter(ValueError):
    """CTranslate2 has no loader for the model's architecture."""


def check_convertible(model_dir: Path) -> None:
    """Refuse, before any merge or conversion, a model whose config class CTranslate2 has no
    loader for (EXAONE, for one), naming the engines that serve it."""
    import json

    from ctranslate2.converters import transformers as ct2_transformers
    from transformers import CONFIG_MAPPING

    base = Path(adapter_base(model_dir) or model_dir)
    config = base / "config.json"
    if not config.is_file():  # a hub id: the converter's own error says what it found
        return
    model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type", "")
    cls = CONFIG_MAPPING[model_type].__name__ if model_type in CONFIG_MAPPING else model_type
    loaders = getattr(ct2_transformers, "_MODEL_LOADERS", None)
    if loaders is not None and cls not in loaders:
        raise NoConverter(
            f"{model_dir}: CTranslate2 cannot convert {cls} ({model_type}); serve it with"
            " --engine transformers (or vllm, or llamacpp where llama.cpp converts it)"
        )


def conversion_sha256(path: Path) -> str:
    """sha256 over every file of a conversion (names and bytes): the weights in model.bin, and
    the config and vocabulary that say how to read them."""
    return tree_sha256(path)


def _set_aside(out: Path, why: str) -> None:
    log.warning("%s: the cached CTranslate2 conversion %s; converting again", out, why)
    stale = out.with_name(f"{out.name}.stale-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    with contextlib.suppress(OSError):  # another replica set it aside first
        out.rename(stale)
    shutil.rmtree(stale, ignore_errors=True)


def verified_convert(
    model_dir: Path,
    quantization: str,
    sha256: str | None,
    expected: str | None,
    trust_remote_code: bool = False,
) -> tuple[Path, str]:
    """`convert`, using a cached conversion only when its sha256 is `expected` (the one
    recorded when it was made): one that differs (changed on disk) or was never recorded is
    set aside, with a warning, and converted again. Returns the dir and its sha256."""
    from kollm.artifacts import weights_sha256

    out = converted_dir(model_dir, quantization, sha256 or weights_sha256(model_dir))
    if (out / "model.bin").exists():
        found = conversion_sha256(out)
        if found == expected:
            return out, found
        recorded = f"recorded {expected[:12]}" if expected else "none recorded"
        _set_aside(out, f"has sha256 {found[:12]} ({recorded})")
    path = convert(model_dir, quantization, sha256, trust_remote_code)
    return path, conversion_sha256(path)


def convert(
    model_dir: Path,
    quantization: str = "int8",
    sha256: str | None = None,
    trust_remote_code: bool = False,
) -> Path:
    """Convert a transformers model dir (or a LoRA adapter, merged first); cached by sha256;
    one that needs remote code runs it only with `trust_remote_code`."""
    import ctranslate2

    from kollm.artifacts import weights_sha256

    remote = dir_kwargs(model_dir, trust_remote_code)  # refused by name before any work
    check_convertible(model_dir)
    sha = sha256 or weights_sha256(model_dir)
    out = converted_dir(model_dir, quantization, sha)
    if (out / "model.bin").exists():
        return out
    # Names unique to this process: replicas started together convert at once, and the first
    # rename wins; the others drop their copy and use it.
    unique = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    source = model_dir
    if (model_dir / "adapter_config.json").exists():
        from kollm.engines.lora import merge_lora

        merged = out.with_name(f"{out.name}.merged-{unique}")
        source = merge_lora(model_dir, merged, trust_remote_code)
    tmp = out.with_name(f"{out.name}.tmp-{unique}")
    try:
        config_compat()
        converter = ctranslate2.converters.TransformersConverter(str(source), **remote)
        converter.convert(str(tmp), quantization=quantization)
        fill_special_tokens(tmp)
        try:
            tmp.rename(out)
        except OSError:  # another process renamed its conversion first
            if not (out / "model.bin").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if source != model_dir:
            shutil.rmtree(source, ignore_errors=True)
    return out


def fill_special_tokens(conversion: Path) -> None:
    """CTranslate2 writes the tokenizer's BOS and UNK into the conversion's config.json and
    refuses to load one where they are null (a GPT-NeoX tokenizer may name only its EOS):
    the EOS stands in, as GPT-2-style tokenizers use one token for all three."""
    import json

    path = conversion / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    missing = [k for k in ("bos_token", "unk_token") if config.get(k) is None]
    if missing and config.get("eos_token") is not None:
        config.update(dict.fromkeys(missing, config["eos_token"]))
        path.write_text(json.dumps(config, indent=2), encoding="utf-8")


class _StepCallback:
    """CTranslate2's per-step callback, which sees the end token too (not part of the answer).
    It stops the sequence when the callback returns a truthy value (and fails on a value it
    cannot cast), so whatever on_token returns is dropped here.

    CTranslate2 keeps a copy of the callback in its job and may drop it on its own worker
    thread after generate returns: were that the last reference to the engine (a callback
    bound to it), the Generator would be destroyed there and join its own thread, which aborts
    the process ("Resource deadlock avoided"). So on_token is released once generate returns."""

    def __init__(self, on_token: TokenCallback, ends: tuple[int, ...]) -> None:
        self.on_token: TokenCallback | None = on_token
        self.ends = ends

    def __call__(self, step) -> None:
        if self.on_token is not None and step.token_id not in self.ends:
            self.on_token(step.batch_id, step.token_id)


class SharedPrefixes:
    """Token prefixes that several prompts start with (a chat service's system prompt, a RAG
    context): passed to CTranslate2 as the batch's `static_prompt`, whose model state it
    caches and reuses, so the shared part is computed once instead of in every request.

    A batch's prefix is the longest that all its prompts share (with each other, or with a
    recent prompt when the batch is one request), at least `min_tokens` long and leaving each
    prompt a token of its own. CTranslate2 keeps every static prompt it caches, so at most
    `max_prefixes` distinct ones are used; a longer one that starts with a known prefix is
    cut back to it, so prompts that differ only after the system prompt share one entry."""

    def __init__(self, min_tokens: int = 32, max_prefixes: int = 16, recent: int = 32) -> None:
        self.min_tokens, self.max_prefixes = min_tokens, max_prefixes
        self.known: list[tuple[str, ...]] = []
        self.recent: deque[tuple[str, ...]] = deque(maxlen=recent)

    @staticmethod
    def _common(a, b) -> int:
        n = 0
        for x, y in zip(a, b, strict=False):
            if x != y:
                break
            n += 1
        return n

    def choose(self, prompts: list[list[str]]) -> int:
        """How many leading tokens the batch passes as its static prompt (0: none)."""
        first = prompts[0]
        if len(prompts) > 1:
            shared = min(self._common(first, p) for p in prompts[1:])
        else:
            shared = max((self._common(first, p) for p in self.recent), default=0)
        self.recent.extend(tuple(p[:2048]) for p in prompts)
        shared = min(shared, min(len(p) for p in prompts) - 1)
        if shared < self.min_tokens:
            return 0
        prefix = tuple(first[:shared])
        known = [k for k in self.known if prefix[: len(k)] == k]
        if known:
            return len(max(known, key=len))
        if len(self.known) >= self.max_prefixes:
            return 0
        self.known.append(prefix)
        return shared


class CTranslate2Engine:
    name = "ctranslate2"

    def __init__(
        self,
        model_dir: str | Path,
        quantization: str = "int8",
        device: str = "cpu",
        sha256: str | None = None,
        threads: int = 0,
        prefix_cache: bool = True,
        conversion_sha256: str | None = None,
        verify_conversion: bool = False,
        trust_remote_code: bool = False,
        conversion_dir: str | Path | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        # a conversion already made (an export), loaded as it is instead of converting
        self.conversion_dir = Path(conversion_dir) if conversion_dir else None
        self.trust_remote_code = trust_remote_code  # run modeling code shipped with the model
        self.quantization, self.device, self.sha256, self.threads = (
            quantization,
            device,
            sha256,
            threads,
        )
        self.model = None
        self.tokenizer = None
        self.is_encoder_decoder = False
        self.context_length = 2048
        self.vocab_size: int | None = None
        self.end_ids: tuple[int, ...] = ()
        self.prefixes = SharedPrefixes() if prefix_cache else None
        # the cached conversion must have this sha256 (the recorded one) to be used as it is
        self.expected_conversion, self.verify_conversion = conversion_sha256, verify_conversion
        self.conversion: Path | None = None
        self.conversion_sha256: str | None = None  # of what was loaded, when verified

    def load(self) -> None:
        import ctranslate2
        from transformers import AutoConfig, AutoTokenizer

        if self.conversion_dir is not None:
            path = self.conversion_dir
        elif self.verify_conversion:
            path, self.conversion_sha256 = verified_convert(
                self.model_dir,
                self.quantization,
                self.sha256,
                self.expected_conversion,
                self.trust_remote_code,
            )
        else:
            path = convert(self.model_dir, self.quantization, self.sha256, self.trust_remote_code)
        self.conversion = path
        remote = dir_kwargs(self.model_dir, self.trust_remote_code)
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir), **remote)
        base = adapter_base(self.model_dir) or str(self.model_dir)
        config = AutoConfig.from_pretrained(
            base, **dir_kwargs(self.model_dir, self.trust_remote_code, base)
        )
        self.is_encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
        self.context_length = int(getattr(config, "max_position_embeddings", 0) or 2048)
        # a merged adapter whose chat template added tokens has their rows too
        own = None if adapter_base(self.model_dir) else config
        self.vocab_size = vocab_limit(self.tokenizer, own)
        self.end_ids = end_ids(self.model_dir, self.tokenizer)
        cls = ctranslate2.Translator if self.is_encoder_decoder else ctranslate2.Generator
        self.model = cls(
            str(path),
            device=self.device,
            compute_type=self.quantization,
            intra_threads=self.threads,
        )

    @property
    def capabilities(self) -> Capabilities:
        """Static batches (CTranslate2 cannot add a sequence to a running batch). A
        decoder-only batch runs its prompts together only up to the shortest one's length;
        CTranslate2 feeds the rest of each longer prompt one decoding step at a time (measured:
        8 prompts of 28-125 tokens take 6.6 s to prefill, the same 8 cut to 100 tokens 1.2 s),
        so the batcher groups such an engine's requests by prompt length. An encoder pads."""
        return Capabilities(
            uneven_prompt_cost=not self.is_encoder_decoder,
            embeddings=False,
            sampling=ENGINE_SAMPLING["ctranslate2"],
        )

    def _tokens(self, prompt: Prompt, max_new_tokens: int) -> list[str]:
        ids = self.tokenize(prompt) if isinstance(prompt, str) else prompt
        limit = self.context_length - (0 if self.is_encoder_decoder else max_new_tokens)
        return self.tokenizer.convert_ids_to_tokens(ids[-limit:])  # keep the end: the question

    def generate(
        self,
        prompts: list[Prompt],
        params: GenerationParams,
        on_token: TokenCallback | None = None,
        adapter: str | None = None,
    ) -> list[Generation]:
        if adapter is not None:
            raise ValueError(
                "ctranslate2 serves merged models; the transformers engine serves adapters"
            )
        if self.model is None:
            self.load()
        tokens = [self._tokens(p, params.max_new_tokens) for p in prompts]
        options = {
            "max_length": params.max_new_tokens,
            "beam_size": params.num_beams,
            "repetition_penalty": params.repetition_penalty,
            "no_repeat_ngram_size": params.no_repeat_ngram_size,
            "sampling_topk": (params.top_k or 0) if params.do_sample else 1,  # 0: all tokens
            "sampling_temperature": params.temperature,
            # CTranslate2 reads top_p as a float32: a tiny one (5e-324) becomes 0 and fails.
            "sampling_topp": max(params.top_p, 1e-6),
            "end_token": list(self.end_ids),  # ids: CTranslate2 stops on any of them
        }
        if params.seed is not None:
            import ctranslate2

            ctranslate2.set_random_seed(params.seed % 2**32)  # it takes an unsigned 32-bit seed
        callback = None
        if on_token is not None and params.num_beams == 1:
            options["callback"] = callback = _StepCallback(on_token, self.end_ids)
        try:
            ids = self._generate_ids(tokens, options, params)
        finally:
            if callback is not None:
                callback.on_token = None
        return [self._finish(row, len(t), params) for row, t in zip(ids, tokens, strict=True)]

    def _generate_ids(self, tokens: list[list[str]], options: dict, params: GenerationParams):
        if self.is_encoder_decoder:
            results = self.model.translate_batch(
                tokens,
                max_decoding_length=params.max_new_tokens,
                **{k: v for k, v in options.items() if k != "max_length"},
            )
            ids = [self.tokenizer.convert_tokens_to_ids(r.hypotheses[0]) for r in results]
        else:
            shared = self.prefixes.choose(tokens) if self.prefixes is not None else 0
            if shared:
                options["static_prompt"] = tokens[0][:shared]
            starts = [t[shared:] for t in tokens]
            results = self.model.generate_batch(starts, include_prompt_in_result=False, **options)
            ids = [r.sequences_ids[0] for r in results]
        return ids

    def _finish(self, ids: list[int], prompt_tokens: int, params: GenerationParams) -> Generation:
        ids, met_end = cut_at_end(ids, self.end_ids)
        ended = met_end or len(ids) < params.max_new_tokens  # CT2 drops the end token it met
        text, stopped = apply_stop(self.decode(ids), params.stop)
        return Generation(
            text, prompt_tokens, len(ids) + int(ended), "stop" if ended or stopped else "length"
        )

    def tokenize(self, text: str) -> list[int]:
        if self.tokenizer is None:
            self.load()
        return self.tokenizer(text)["input_ids"]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def embed(self, texts: list[str]) -> list[list[float]]:
        raise NotImplementedError(
            "ctranslate2 has no hidden states here; declare an embedding model"
        )

    def score(
        self, sequences: list[list[int]], top_n: int = 0, adapter: str | None = None
    ) -> list[TokenScores]:
        """Through the generator's forward pass (log-probabilities of every position), one
        sequence at a time so a long vocabulary's rows never pile up."""
        import numpy as np

        if adapter is not None:
            raise ValueError(
                "ctranslate2 serves merged models; the transformers engine serves adapters"
            )
        if self.model is None:
            self.load()
        if self.is_encoder_decoder:
            raise ValueError("prompt log-probabilities need a decoder-only model")
        return score_each(
            sequences,
            top_n,
            lambda ids: np.asarray(self.model.forward_batch([ids], return_log_probs=True))[0],
        )

    def health(self) -> dict:
        return {}

    def unload(self) -> None:
        self.model = None
