"""Encoders named by a local dir: a sentence-transformers model (its `1_Pooling/config.json`
says CLS or mean pooling, as bge-m3 and multilingual-e5 ship) or a plain Hugging Face encoder
(mean pooling); vectors are L2-normalised float32, so a dot product is the cosine. And the
cross-encoder reranker (a sequence-classification model scoring a question with a passage)."""

from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path

import numpy as np


class EncoderError(ValueError):
    """An encoder or reranker dir that cannot be loaded; the message names it."""


def _pooling(path: Path) -> str:
    config = path / "1_Pooling" / "config.json"
    if config.exists():
        settings = json.loads(config.read_text(encoding="utf-8"))
        if settings.get("pooling_mode_cls_token"):
            return "cls"
    return "mean"


def _fingerprint(path: Path) -> str:
    """Dir name and a hash of its config, so vectors of a changed encoder are not reused."""
    config = path / "config.json"
    digest = hashlib.sha256(config.read_bytes() if config.exists() else b"").hexdigest()[:12]
    return f"{path.name}-{digest}"


class Encoder:
    def __init__(self, path: str | Path, batch_size: int = 32) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.path = Path(path)
        if not (self.path / "config.json").exists():
            raise EncoderError(f"rag.embedder: {self.path} is not a model dir (no config.json)")
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.model = AutoModel.from_pretrained(self.path).eval()
        self.pooling, self.name = _pooling(self.path), _fingerprint(self.path)
        self.batch_size = batch_size
        self.max_length = min(512, getattr(self.model.config, "max_position_embeddings", 512))

    @property
    def dimension(self) -> int:
        return int(self.model.config.hidden_size)

    def encode(self, texts: list[str]) -> np.ndarray:
        """One normalised float32 row per text."""
        import torch

        rows = []
        for i in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                texts[i : i + self.batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            with torch.inference_mode():
                hidden = self.model(**batch).last_hidden_state
            if self.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            rows.append(torch.nn.functional.normalize(pooled.float(), dim=-1).numpy())
        if not rows:
            return np.zeros((0, self.model.config.hidden_size), dtype=np.float32)
        return np.concatenate(rows).astype(np.float32)


class Reranker:
    """A cross-encoder: higher is more relevant (the last logit of each pair)."""

    def __init__(self, path: str | Path) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.path = Path(path)
        if not (self.path / "config.json").exists():
            raise EncoderError(f"rag.reranker: {self.path} is not a model dir (no config.json)")
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.model = AutoModelForSequenceClassification.from_pretrained(self.path).eval()

    def scores(self, query: str, passages: list[str]) -> list[float]:
        import torch

        if not passages:
            return []
        batch = self.tokenizer(
            [query] * len(passages),
            passages,
            padding=True,
            truncation=True,
            max_length=512,
            return_tensors="pt",
        )
        with torch.inference_mode():
            logits = self.model(**batch).logits
        return logits[:, -1].float().tolist()


@cache
def load_encoder(path: str) -> Encoder:
    """One encoder per dir per process (a server answers many questions with it)."""
    return Encoder(path)


@cache
def load_reranker(path: str) -> Reranker:
    return Reranker(path)
