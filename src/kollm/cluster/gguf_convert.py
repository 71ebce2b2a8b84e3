"""Run llama.cpp's converter with one addition: the BPE pre-tokenizer it could not recognise
by hash may be named by the caller (`--pre-tokenizer NAME`, passed as KOLLM_GGUF_PRE).

The converter tells a BPE pre-tokenizer by hashing how the tokenizer splits a fixed text, and
refuses one whose hash it has not seen, which is every tokenizer trained on a site's own text
(and many Korean bases). kollm names one only when it can tell from `tokenizer.json` that the
split is one llama.cpp implements (GPT-2's byte-level regex); a user who knows names it.
It reads the model's config through the installed transformers 5, which moved keys the
converter still reads (`legacy_hparams`)."""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path


def main(script: Path, argv: list[str]) -> None:
    # the converter's own gguf-py before any installed gguf, as the script itself does
    sys.path[:0] = [str(script.parent / "gguf-py"), str(script.parent)]
    from conversion import base

    original = base.TextModel.get_vocab_base_pre
    named = os.environ.get("KOLLM_GGUF_PRE")

    def get_vocab_base_pre(self, tokenizer) -> str:
        try:
            return original(self, tokenizer)
        except NotImplementedError:
            if named:
                return named
            raise

    base.TextModel.get_vocab_base_pre = get_vocab_base_pre
    load_hparams = base.ModelBase.load_hparams

    def load_legacy_hparams(dir_model: Path, is_mistral_format: bool):
        return legacy_hparams(load_hparams(dir_model, is_mistral_format))

    base.ModelBase.load_hparams = staticmethod(load_legacy_hparams)
    sys.argv = [str(script), *argv]
    runpy.run_path(str(script), run_name="__main__")


def legacy_hparams(config: dict) -> dict:
    """The keys transformers 5 moved into `rope_parameters` back where the converter reads
    them: GPT-NeoX's (Polyglot-ko's) `rotary_pct` and `rope_theta`."""
    rope = config.get("rope_parameters") or {}
    if isinstance(rope, dict):
        if "partial_rotary_factor" in rope:
            config.setdefault("rotary_pct", rope["partial_rotary_factor"])
        if "rope_theta" in rope:
            config.setdefault("rope_theta", rope["rope_theta"])
    return config


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
