"""Merging a LoRA adapter into its base: a standalone model for any engine.

Only adapters that change the base's weights merge (LoRA and its kin). A prompt-learning
adapter (prompt tuning, prefix tuning, P-tuning) adds virtual tokens in front of every
prompt instead: there is nothing to fold into the weights, so only the transformers engine,
which runs PEFT itself, serves one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

# PEFT's peft_type values of the adapters that learn prompts rather than weight updates
PROMPT_LEARNING = ("PROMPT_TUNING", "PREFIX_TUNING", "P_TUNING", "MULTITASK_PROMPT_TUNING")


class AdapterNotMergeable(ValueError):
    """A prompt-learning adapter asked of an engine or export that needs merged weights."""


def adapter_config(model_dir: Path) -> dict | None:
    """The dir's adapter_config.json, or None when it is not a PEFT adapter dir."""
    path = Path(model_dir) / "adapter_config.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def prompt_learning_kind(model_dir: Path) -> str | None:
    """`PROMPT_TUNING`, `PREFIX_TUNING` ... when the dir is a prompt-learning adapter."""
    config = adapter_config(model_dir) or {}
    kind = str(config.get("peft_type") or "").upper()
    return kind if kind in PROMPT_LEARNING else None


def check_mergeable(model_dir: Path, needed_by: str, alternative: str | None = None) -> None:
    """AdapterNotMergeable, naming the adapter's kind and what serves it instead, when
    `needed_by` (an engine, an export format) would have to merge a prompt-learning adapter."""
    kind = prompt_learning_kind(model_dir)
    if kind is None:
        return
    alternative = alternative or "serve with --engine transformers, which runs the adapter as is"
    raise AdapterNotMergeable(
        f"{model_dir}: a {kind.lower()} adapter learns virtual prompt tokens, not weights, so it"
        f" cannot be merged into its base for {needed_by}; {alternative}"
    )


def _peft_class(config: dict, remote: dict):
    """The PEFT auto class of the adapter's task: a seq2seq adapter (BART, T5) loads through
    AutoPeftModelForSeq2SeqLM, which builds the encoder-decoder base."""
    from peft import AutoPeftModelForCausalLM, AutoPeftModelForSeq2SeqLM
    from transformers import AutoConfig

    task = str(config.get("task_type") or "").upper()
    if not task:  # a LoraConfig made without a task: the base's config says which
        base = AutoConfig.from_pretrained(config["base_model_name_or_path"], **remote)
        task = "SEQ_2_SEQ_LM" if getattr(base, "is_encoder_decoder", False) else "CAUSAL_LM"
    return AutoPeftModelForSeq2SeqLM if task == "SEQ_2_SEQ_LM" else AutoPeftModelForCausalLM


def merge_lora(adapter_dir: Path, out_dir: Path, trust_remote_code: bool = False) -> Path:
    """Load base + adapter, fold the adapter into the weights, save model and tokenizer (and,
    for a base that needs remote code, its modeling files and kollm's record of that)."""
    from transformers import AutoTokenizer

    from kollm.artifacts import keep_sentencepiece
    from kollm.remote import REMOTE_FILE, dir_kwargs

    config = adapter_config(adapter_dir)
    if config is None:
        raise FileNotFoundError(f"{adapter_dir}: no adapter_config.json; not a LoRA adapter dir")
    check_mergeable(adapter_dir, "a merged model")
    base = config["base_model_name_or_path"]
    remote = dir_kwargs(adapter_dir, trust_remote_code, base)
    # PEFT reads `revision` as the adapter's own, so only the flag goes to it
    trust = {"trust_remote_code": True} if remote else {}
    model = _peft_class(config, remote).from_pretrained(str(adapter_dir), **trust)
    merged = model.merge_and_unload()
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        merged.save_pretrained(str(tmp))
        local = dir_kwargs(adapter_dir, trust_remote_code)
        AutoTokenizer.from_pretrained(str(adapter_dir), **local).save_pretrained(str(tmp))
        if (adapter_dir / REMOTE_FILE).is_file():
            shutil.copy2(adapter_dir / REMOTE_FILE, tmp / REMOTE_FILE)
        keep_sentencepiece(adapter_dir, tmp)  # what training kept, or else the base's own
        keep_sentencepiece(config["base_model_name_or_path"], tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:  # a failed save (a full disk) leaves no half-written dir
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
