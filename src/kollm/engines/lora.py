"""Merging a LoRA adapter into its base: a standalone model for any engine."""

from __future__ import annotations

import shutil
from pathlib import Path


def merge_lora(adapter_dir: Path, out_dir: Path) -> Path:
    """Load base + adapter, fold the adapter into the weights, save model and tokenizer."""
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    if not (adapter_dir / "adapter_config.json").exists():
        raise FileNotFoundError(f"{adapter_dir}: no adapter_config.json; not a LoRA adapter dir")
    model = AutoPeftModelForCausalLM.from_pretrained(str(adapter_dir))
    merged = model.merge_and_unload()
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        merged.save_pretrained(str(tmp))
        AutoTokenizer.from_pretrained(str(adapter_dir)).save_pretrained(str(tmp))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:  # a failed save (a full disk) leaves no half-written dir
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
