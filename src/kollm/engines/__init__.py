"""Generation backends behind one small protocol, used by eval and serve."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kollm.engines.base import Engine, Generation, GenerationParams

ENGINES = ("ctranslate2", "transformers", "vllm", "llamacpp")

__all__ = ["ENGINES", "Engine", "Generation", "GenerationParams", "open_engine"]


def open_engine(
    kind: str,
    model_dir: Path,
    adapters: dict[str, str] | None = None,
    sha256: str | None = None,
    **options: Any,
) -> Engine:
    """The engine called `kind` over `model_dir` (not loaded yet)."""
    if kind == "transformers":
        from kollm.engines.transformers_engine import TransformersEngine

        return TransformersEngine(model_dir, adapters=adapters)
    if kind == "vllm":
        from kollm.engines.vllm_engine import VllmEngine

        return VllmEngine(model_dir, adapters=adapters, **options)
    if kind == "llamacpp":
        from kollm.engines.llamacpp_engine import LlamaCppEngine

        return LlamaCppEngine(model_dir, adapters=adapters, **options)
    if adapters:
        raise ValueError(
            f"LoRA adapters are served by the transformers, vllm or llamacpp engine, not {kind}"
        )
    if kind == "ctranslate2":
        from kollm.engines.ctranslate2_engine import CTranslate2Engine

        return CTranslate2Engine(model_dir, sha256=sha256, **options)
    raise ValueError(f"unknown engine {kind!r}; choose one of {', '.join(ENGINES)}")
