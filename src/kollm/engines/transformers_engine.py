"""The transformers engine: any causal or seq2seq model dir, and LoRA adapters over one base.

Several adapters load onto one base model (PEFT `load_adapter`) and a batch picks one with
`adapter=`; a batch without one runs on the base weights alone (adapters disabled), unless the
model dir is itself an adapter, which is then the default. Adapters load and unload while
serving (`load_adapter`, `unload_adapter`); the base is never reloaded. Tokens reach
`on_token` through a streamer that HF's `generate` feeds one step (shape (batch,)) at a time.
"""

from __future__ import annotations

import threading
from contextlib import nullcontext
from pathlib import Path

from kollm.engines.base import (
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


class OpenAIPenalties:
    """OpenAI's presence and frequency penalties, as vLLM applies them: a token's logit is
    lowered by `presence` once it occurs in the answer so far and by `frequency` times the
    number of times it does (the prompt's tokens are not counted)."""

    def __init__(self, params: GenerationParams, prompt_length: int) -> None:
        self.presence, self.frequency = params.presence_penalty, params.frequency_penalty
        self.prompt_length = prompt_length

    def __call__(self, input_ids, scores):
        import torch

        answer = input_ids[:, self.prompt_length :]
        counts = torch.zeros_like(scores).scatter_add_(
            1, answer, torch.ones_like(answer, dtype=scores.dtype)
        )
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)


class _CallbackStreamer:
    """Forwards each generated token of each row to `on_token`, until that row's first end
    id (the end token is not part of the answer; what follows it is padding)."""

    def __init__(self, on_token: TokenCallback, batch: int, ends: tuple[int, ...]) -> None:
        self.on_token, self.ends = on_token, ends
        self.done = [False] * batch
        self.prompt_seen = False

    def put(self, value) -> None:
        if not self.prompt_seen:  # generate() first puts the prompt (or decoder start) ids
            self.prompt_seen = True
            return
        for i, token in enumerate(value.reshape(-1).tolist()):
            if self.done[i]:
                continue
            if token in self.ends:
                self.done[i] = True
                continue
            self.on_token(i, token)

    def end(self) -> None:
        pass


class TransformersEngine:
    name = "transformers"
    capabilities = Capabilities(adapters=True, runtime_adapters=True)

    def __init__(
        self,
        model_dir: str | Path,
        adapters: dict[str, str | Path] | None = None,
        device: str | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.trust_remote_code = trust_remote_code  # run modeling code shipped with the model
        self.adapters = {k: Path(v) for k, v in (adapters or {}).items()}
        self.device = device
        self.model = None
        self.tokenizer = None
        self.is_encoder_decoder = False
        self.default_adapter: str | None = None
        self.context_length = 2048
        self.vocab_size: int | None = None
        self.end_ids: tuple[int, ...] = ()
        self._lock = threading.Lock()  # one generate at a time per loaded model

    def load(self) -> None:
        import torch
        from transformers import (
            AutoConfig,
            AutoModelForCausalLM,
            AutoModelForSeq2SeqLM,
            AutoTokenizer,
        )
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        own_adapter = adapter_base(self.model_dir)
        if own_adapter is not None:  # the dir is an adapter: serve it as "default" over its base
            self.adapters = {"default": self.model_dir, **self.adapters}
            self.default_adapter = "default"
        base = own_adapter or str(self.model_dir)
        remote = dir_kwargs(self.model_dir, self.trust_remote_code)
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir), **remote)
        remote = dir_kwargs(self.model_dir, self.trust_remote_code, base)
        config = AutoConfig.from_pretrained(base, **remote)
        self.is_encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
        cls = AutoModelForSeq2SeqLM if self.is_encoder_decoder else AutoModelForCausalLM
        model = cls.from_pretrained(base, **remote)
        if own_adapter is not None and len(self.tokenizer) > config.vocab_size:
            # the adapter's chat template added tokens: their rows come with the adapter
            model.resize_token_embeddings(len(self.tokenizer), mean_resizing=False)
            config = model.config
        if self.adapters:
            from peft import PeftModel

            (first, path), *rest = self.adapters.items()
            model = PeftModel.from_pretrained(model, str(path), adapter_name=first)
            for name, path in rest:
                model.load_adapter(str(path), adapter_name=name)
        self.model = model.to(self.device).eval()
        self.context_length = int(getattr(config, "max_position_embeddings", 0) or 2048)
        self.vocab_size = vocab_limit(self.tokenizer, config)
        self.end_ids = end_ids(self.model_dir, self.tokenizer)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # Decoder-only batches pad on the left, so every prompt ends where generation starts.
        self.tokenizer.padding_side = "right" if self.is_encoder_decoder else "left"
        self.tokenizer.truncation_side = "left"  # a prompt too long keeps its end: the question

    def _generate_kwargs(
        self, params: GenerationParams, batch_prompt_length: int, batch_size: int
    ) -> dict:
        kwargs = {
            "max_new_tokens": params.max_new_tokens,
            "num_beams": params.num_beams,
            "do_sample": params.do_sample,
            "repetition_penalty": params.repetition_penalty,
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": list(self.end_ids),
        }
        if params.do_sample:
            # top_k set even when off: the model's generation config would otherwise add its
            # own (transformers' default is 50), which an OpenAI request never asked for
            kwargs.update(temperature=params.temperature, top_p=params.top_p)
            kwargs.update(top_k=max(params.top_k, 0), min_p=params.min_p or None)
        if params.no_repeat_ngram_size:
            kwargs["no_repeat_ngram_size"] = params.no_repeat_ngram_size
        if params.logit_bias:
            kwargs["sequence_bias"] = [[[token], bias] for token, bias in params.logit_bias]
        processors = []
        if params.presence_penalty or params.frequency_penalty:
            processors.append(OpenAIPenalties(params, batch_prompt_length))
        if params.json_schema is not None:  # last: the mask has the final word
            from kollm.engines.structured import JsonSchemaProcessor, grammar_for

            grammar = grammar_for(params.json_schema, self.tokenizer)
            processors.append(
                JsonSchemaProcessor(grammar, self.tokenizer, batch_size, batch_prompt_length)
            )
        if processors:
            kwargs["logits_processor"] = processors
        return kwargs

    def _encode(self, prompts: list[Prompt], max_new_tokens: int):
        """The batch's padded tensors; a text is tokenised here, token ids are taken as they
        are. Either is cut from the front to the context (the tokenizer's truncation side)."""
        # Special tokens as in training (TRL and the seq2seq trainer tokenize with the defaults).
        limit = self.context_length - (0 if self.is_encoder_decoder else max_new_tokens)
        rows = [
            self.tokenizer(p, truncation=True, max_length=limit)["input_ids"]
            if isinstance(p, str)
            else list(p)[-limit:]
            for p in prompts
        ]
        return self.tokenizer.pad({"input_ids": rows}, padding=True, return_tensors="pt")

    def generate(
        self,
        prompts: list[Prompt],
        params: GenerationParams,
        on_token: TokenCallback | None = None,
        adapter: str | None = None,
    ) -> list[Generation]:
        import torch

        if self.model is None:
            self.load()
        batch = self._encode(prompts, params.max_new_tokens).to(self.device)
        # where the answer starts in what generate passes its logits processors
        prompt_length = 1 if self.is_encoder_decoder else batch["input_ids"].shape[1]
        kwargs = self._generate_kwargs(params, prompt_length, len(prompts))
        if on_token is not None:
            kwargs["streamer"] = _CallbackStreamer(on_token, len(prompts), self.end_ids)
        with self._lock, torch.inference_mode(), self._adapter(adapter):
            if params.seed is not None:
                torch.manual_seed(params.seed)
            out = self.model.generate(**batch, **kwargs)
        # (batch, prompt_len + new) for decoders; (batch, 1 + new) for encoder-decoders.
        new = out[:, 1:] if self.is_encoder_decoder else out[:, batch["input_ids"].shape[1] :]
        prompt_lengths = batch["attention_mask"].sum(dim=1).tolist()
        return [
            self._finish(row.tolist(), n, params)
            for row, n in zip(new, prompt_lengths, strict=True)
        ]

    def _adapter(self, name: str | None):
        """Activate adapter `name`; with none (and no default), run on the base weights."""
        name = name or self.default_adapter
        if name is not None:
            self.model.set_adapter(name)
            return nullcontext()
        if getattr(self.model, "peft_config", None):
            return self.model.disable_adapter()
        return nullcontext()

    def load_adapter(self, name: str, path: str | Path) -> None:
        """Put another adapter on the loaded base."""
        from peft import PeftModel

        with self._lock:
            if name in self.adapters:
                raise ValueError(f"an adapter named '{name}' is already loaded")
            if getattr(self.model, "peft_config", None):
                self.model.load_adapter(str(path), adapter_name=name)
            else:
                self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=name)
            self.model.eval()
            self.adapters[name] = Path(path)

    def unload_adapter(self, name: str) -> None:
        with self._lock:
            if name not in self.adapters or name == self.default_adapter:
                raise ValueError(f"no adapter named '{name}' was loaded at run time")
            self.model.delete_adapter(name)
            del self.adapters[name]

    def _finish(self, ids: list[int], prompt_tokens: int, params: GenerationParams) -> Generation:
        ids, ended = cut_at_end(ids, self.end_ids)
        text, stopped = apply_stop(self.decode(ids), params.stop)
        finish = "stop" if ended or stopped else "length"
        return Generation(text, int(prompt_tokens), len(ids) + int(ended), finish)

    def tokenize(self, text: str) -> list[int]:
        if self.tokenizer is None:
            self.load()
        return self.tokenizer(text)["input_ids"]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def embed(self, texts: list[str]) -> list[list[float]]:
        """Mean-pooled last hidden states (of the encoder, for encoder-decoders), L2-normalised."""
        import torch

        if self.model is None:
            self.load()
        batch = self.tokenizer(
            texts,
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=self.context_length,
        ).to(self.device)
        with self._lock, torch.inference_mode(), self._adapter(None):
            if self.is_encoder_decoder:
                hidden = self.model.get_encoder()(**batch).last_hidden_state
            else:
                hidden = self.model(**batch, output_hidden_states=True).hidden_states[-1]
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (batch, seq, 1)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)  # (batch, hidden)
        return torch.nn.functional.normalize(pooled.float(), dim=-1).tolist()

    def score(
        self, sequences: list[list[int]], top_n: int = 0, adapter: str | None = None
    ) -> list[TokenScores]:
        """Through one forward pass a sequence (log-softmax of the logits), under `adapter`."""
        import torch

        if self.model is None:
            self.load()
        if getattr(self.model.config, "is_encoder_decoder", False):
            raise ValueError("prompt log-probabilities need a decoder-only model")

        def forward(ids: list[int]):
            x = torch.tensor([ids], device=self.device)
            with self._lock, torch.inference_mode(), self._adapter(adapter):
                # a prompt-tuning adapter's virtual tokens come first: the last rows are ids'
                logits = self.model(input_ids=x).logits[0, -len(ids) :].float()
            return torch.log_softmax(logits, dim=-1).cpu().numpy()

        return score_each(sequences, top_n, forward)

    def health(self) -> dict:
        return {}

    def unload(self) -> None:
        self.model = None
        self.tokenizer = None
