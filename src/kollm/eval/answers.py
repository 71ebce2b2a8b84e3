"""What a model dir answers to plain requests, each asked as a chat in the model's prompt
format: the safety set and the judge's prompt set both need it."""

from __future__ import annotations

from pathlib import Path

from kollm.engines import open_engine
from kollm.engines.base import GenerationParams
from kollm.prompts import PromptFormat, request_prompt


def answers(
    model_dir: Path,
    fmt: PromptFormat,
    requests: list[str],
    max_new_tokens: int = 48,
    trust_remote_code: bool = False,
) -> list[str]:
    """One greedy answer per request."""
    engine = open_engine("transformers", model_dir, trust_remote_code=trust_remote_code)
    engine.load()
    try:
        tokenizer = getattr(engine, "tokenizer", None)
        prompts = [
            request_prompt(fmt, [{"role": "user", "content": r}], tokenizer) for r in requests
        ]
        return [a.text for a in engine.generate(prompts, GenerationParams(max_new_tokens))]
    finally:
        engine.unload()
