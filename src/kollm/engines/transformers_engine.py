"""The transformers engine: any causal or seq2seq model dir, or a PEFT adapter over its base."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from threading import Thread

from kollm.engines.base import GenerationParams, apply_stop


class TransformersEngine:
    name = "transformers"

    def __init__(self, model_dir: str | Path, device: str | None = None) -> None:
        self.model_dir = Path(model_dir)
        self.device = device
        self.model = None
        self.tokenizer = None
        self.is_encoder_decoder = False

    def load(self) -> None:
        import torch
        from transformers import (
            AutoConfig,
            AutoModelForCausalLM,
            AutoModelForSeq2SeqLM,
            AutoTokenizer,
        )

        self.device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir))
        adapter = self.model_dir / "adapter_config.json"
        if adapter.exists():
            from peft import AutoPeftModelForCausalLM

            self.model = AutoPeftModelForCausalLM.from_pretrained(str(self.model_dir))
        else:
            config = AutoConfig.from_pretrained(str(self.model_dir))
            self.is_encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
            cls = AutoModelForSeq2SeqLM if self.is_encoder_decoder else AutoModelForCausalLM
            self.model = cls.from_pretrained(str(self.model_dir))
        self.model.to(self.device).eval()
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # Decoder-only batches pad on the left, so every prompt ends where generation starts.
        self.tokenizer.padding_side = "right" if self.is_encoder_decoder else "left"

    @staticmethod
    def adapter_base(model_dir: Path) -> str | None:
        path = model_dir / "adapter_config.json"
        return json.loads(path.read_text())["base_model_name_or_path"] if path.exists() else None

    def _generate_kwargs(self, params: GenerationParams) -> dict:
        kwargs = {
            "max_new_tokens": params.max_new_tokens,
            "num_beams": params.num_beams,
            "do_sample": params.do_sample,
            "repetition_penalty": params.repetition_penalty,
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": self.tokenizer.eos_token_id,
        }
        if params.do_sample:
            kwargs.update(temperature=params.temperature, top_p=params.top_p)
        if params.no_repeat_ngram_size:
            kwargs["no_repeat_ngram_size"] = params.no_repeat_ngram_size
        return kwargs

    def _encode(self, prompts: list[str], max_new_tokens: int = 0):
        # Special tokens as in training (TRL and the seq2seq trainer tokenize with the defaults).
        # A prompt longer than the context keeps its end: the question sits there.
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit and not self.is_encoder_decoder:
            limit -= max_new_tokens
        self.tokenizer.truncation_side = "left"
        return self.tokenizer(
            prompts, return_tensors="pt", padding=True, truncation=bool(limit), max_length=limit
        ).to(self.device)

    def generate(self, prompts: list[str], params: GenerationParams) -> list[str]:
        import torch

        if self.model is None:
            self.load()
        if params.seed is not None:
            torch.manual_seed(params.seed)
        batch = self._encode(prompts, params.max_new_tokens)
        with torch.inference_mode():
            out = self.model.generate(**batch, **self._generate_kwargs(params))
        # (batch, prompt_len + new) for decoders; (batch, new) for encoder-decoders.
        new_tokens = out if self.is_encoder_decoder else out[:, batch["input_ids"].shape[1] :]
        texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        return [apply_stop(t, params.stop).strip() for t in texts]

    def stream(self, prompt: str, params: GenerationParams) -> Iterator[str]:
        from transformers import TextIteratorStreamer

        if self.model is None:
            self.load()
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs = {
            **self._encode([prompt], params.max_new_tokens),
            **self._generate_kwargs(params),
            "streamer": streamer,
        }
        thread = Thread(target=self.model.generate, kwargs=kwargs, daemon=True)
        thread.start()
        yield from streamer
        thread.join()

    def tokenize(self, text: str) -> list[int]:
        if self.tokenizer is None:
            self.load()
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def unload(self) -> None:
        self.model = None
        self.tokenizer = None
