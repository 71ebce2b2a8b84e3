"""Generation backends behind one small protocol, used by eval and serve."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kollm.engines.base import ENGINE_SAMPLING, Engine, Generation, GenerationParams

ENGINES = ("ctranslate2", "transformers", "vllm", "llamacpp")

__all__ = [
    "ENGINES",
    "ENGINE_SAMPLING",
    "Engine",
    "Generation",
    "GenerationParams",
    "choose_engine",
    "open_engine",
]


def choose_engine(
    requested: str, model_dirs: list[Path] = (), needs: tuple[str, ...] = ()
) -> tuple[str, str]:
    """The engine `requested` names, and why; `auto` is the faster CPU engine that can serve
    every model: llama.cpp's llama-server where it is found (bench/serve_bench.py measured it
    ahead of CTranslate2 on the same model, see README), else CTranslate2. llama.cpp serves no
    encoder-decoder model and gives no prompt log-probabilities, so a seq2seq model or a need
    for `scoring` (lm-eval through the API) keeps CTranslate2."""
    if requested != "auto":
        return requested, "as asked"
    from kollm.engines.llamacpp_engine import LlamaServerMissing, find_llama_server

    try:
        binary = find_llama_server()
    except LlamaServerMissing:
        return "ctranslate2", "auto: no llama-server here (`make llama-server` builds it)"
    if "scoring" in needs:
        return "ctranslate2", "auto: prompt log-probabilities are needed, which llama-server lacks"
    seq2seq = [d for d in model_dirs if _is_encoder_decoder(Path(d))]
    if seq2seq:
        return "ctranslate2", f"auto: {seq2seq[0].name} is encoder-decoder, which llama.cpp lacks"
    return "llamacpp", f"auto: llama-server found at {binary}, faster than CTranslate2 on a CPU"


def _is_encoder_decoder(model_dir: Path) -> bool:
    import json

    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False  # not a transformers dir: the engine says what it cannot read
    return bool(config.get("is_encoder_decoder"))


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
