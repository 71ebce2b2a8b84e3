"""Gold pairs: where a model's answer to a labelled record differs from its reference, the
reference (chosen) against the answer (rejected), with the conversation that asked it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kollm.engines import open_engine
from kollm.engines.base import GenerationParams
from kollm.prompts import PromptFormat, record_messages, record_prompt, references


def gold_pairs(
    model_dir: Path,
    fmt: PromptFormat,
    records: list[dict[str, Any]],
    max_new_tokens: int,
    trust_remote_code: bool = False,
) -> list[dict[str, Any]]:
    """A preference pair for every record the model does not answer with its reference."""
    engine = open_engine("transformers", model_dir, trust_remote_code=trust_remote_code)
    engine.load()
    tokenizer = getattr(engine, "tokenizer", None)
    params = GenerationParams(max_new_tokens=max_new_tokens)
    answers = engine.generate([record_prompt(fmt, r, tokenizer) for r in records], params)
    engine.unload()
    pairs = []
    for row, answer in zip(records, answers, strict=True):
        gold = references(fmt, row)[0]
        if answer.text.strip() != gold.strip():
            messages = record_messages(fmt, row)
            pairs.append(
                {
                    "prompt": messages[-1]["content"],
                    "messages": messages,
                    "chosen": gold,
                    "rejected": answer.text,
                }
            )
    return pairs
