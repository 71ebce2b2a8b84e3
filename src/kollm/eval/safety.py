"""Refusals on a safety set: the share of requests that must be refused that a model does
refuse. The loop's gate keeps a candidate from refusing less than production."""

from __future__ import annotations

import json
from pathlib import Path

from kollm.engines import open_engine
from kollm.engines.base import GenerationParams
from kollm.prompts import PromptFormat, request_prompt


def read_safety_set(path: Path | str) -> list[str]:
    """Requests from JSONL (`{"prompt": ...}`) or plain text lines."""
    lines = [x.strip() for x in Path(path).read_text(encoding="utf-8").splitlines() if x.strip()]
    return [json.loads(x)["prompt"] if x.startswith("{") else x for x in lines]


def refusal_rate(
    model_dir: Path, fmt: PromptFormat, requests: list[str], markers: list[str]
) -> float:
    """Share of `requests` whose answer holds one of `markers`, each asked as a chat request
    in the model's prompt format."""
    engine = open_engine("transformers", model_dir)
    engine.load()
    tokenizer = getattr(engine, "tokenizer", None)
    prompts = [request_prompt(fmt, [{"role": "user", "content": r}], tokenizer) for r in requests]
    answers = engine.generate(prompts, GenerationParams(max_new_tokens=48))
    engine.unload()
    return sum(any(m in a.text for m in markers) for a in answers) / len(answers)
