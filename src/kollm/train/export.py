"""`kollm export`: merge a LoRA adapter into its base and save a standalone model."""

from kollm.engines.lora import merge_lora

__all__ = ["merge_lora"]
