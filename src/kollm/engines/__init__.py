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
    "refuse_unmergeable",
]


def choose_engine(
    requested: str, model_dirs: list[Path] = (), needs: tuple[str, ...] = ()
) -> tuple[str, str]:
    """The engine `requested` names, and why; `auto` is the faster CPU engine that can serve
    every model: llama.cpp's llama-server where it is found (bench/serve_bench.py measured it
    ahead of CTranslate2 on the same model, see docs/stages/serve.md), else CTranslate2.
    llama.cpp serves no encoder-decoder model and gives no prompt log-probabilities, so a seq2seq
    model or a need for `scoring` (lm-eval through the API) keeps CTranslate2. A prompt-learning
    adapter (prompt or prefix tuning) has no weights to merge: only transformers serves it."""
    if requested != "auto":
        return requested, "as asked"
    from kollm.engines.lora import prompt_learning_kind

    prompts = [(d, prompt_learning_kind(Path(d))) for d in model_dirs]
    prompts = [(Path(d), kind) for d, kind in prompts if kind]
    if prompts:
        dir_, kind = prompts[0]
        return "transformers", f"auto: {dir_.name} is a {kind.lower()} adapter, unmergeable"
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
    """The engine called `kind` over `model_dir` (not loaded yet). A prompt-learning adapter
    (prompt or prefix tuning), as the model or as one of `adapters`, is refused here by any
    engine but transformers: the others serve merged weights or LoRA only."""
    refuse_unmergeable(kind, model_dir, adapters)
    if kind == "transformers":
        from kollm.engines.transformers_engine import TransformersEngine

        trust = bool(options.get("trust_remote_code"))
        return TransformersEngine(model_dir, adapters=adapters, trust_remote_code=trust)
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


def refuse_unmergeable(kind: str, model_dir: Path, adapters: dict[str, str] | None = None) -> None:
    """AdapterNotMergeable (a ValueError) naming the dir, when an engine other than
    transformers is asked to serve a prompt-learning adapter; the server calls it before it
    makes an engine's files (llamacpp's GGUF), so the refusal comes first."""
    if kind == "transformers":
        return
    from kollm.engines.lora import check_mergeable

    for path in [Path(model_dir), *map(Path, (adapters or {}).values())]:
        check_mergeable(path, f"the {kind} engine")
