"""The embedded default: a byte-level BPE tokenizer trained on the recipe's data and a small
Llama-style decoder or BART-style encoder-decoder initialised from scratch, all offline."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from kollm.config import ModelConfig
from kollm.prompts import set_chat_template
from kollm.text.normalize import PLACEHOLDER_RE

SPECIAL = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: Path):
    """Byte-level BPE over `texts`; `#Person1#`-style placeholders become single tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = list(texts)
    placeholders = sorted({m for t in texts for m in PLACEHOLDER_RE.findall(t)})
    tok = Tokenizer(models.BPE(unk_token=SPECIAL["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Placeholders are cut out before BPE learns merges, then added whole.
    tok.train_from_iterator((PLACEHOLDER_RE.sub(" ", t) for t in texts), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL)
    fast.add_tokens(placeholders)
    # Every scratch model is a chat model too: ChatML turns, served through /v1/chat/completions.
    set_chat_template(fast, "chatml")
    fast.save_pretrained(str(out_dir))
    return fast


def llama_config(cfg: ModelConfig, tokenizer, **extra):
    """A Llama config of the recipe's shape, sized to the tokenizer."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.heads,
        max_position_embeddings=cfg.max_positions,
        **extra,
    )


def build_model(cfg: ModelConfig, tokenizer, seed: int):
    """A randomly initialised model of the recipe's shape, sized to the tokenizer."""
    import torch
    from transformers import BartConfig, BartForConditionalGeneration, LlamaForCausalLM

    torch.manual_seed(seed)
    ids = {
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    if cfg.architecture == "llama":
        return LlamaForCausalLM(llama_config(cfg, tokenizer, tie_word_embeddings=True, **ids))
    config = BartConfig(
        vocab_size=len(tokenizer),
        d_model=cfg.hidden_size,
        encoder_layers=cfg.layers,
        decoder_layers=cfg.layers,
        encoder_attention_heads=cfg.heads,
        decoder_attention_heads=cfg.heads,
        encoder_ffn_dim=cfg.intermediate_size,
        decoder_ffn_dim=cfg.intermediate_size,
        max_position_embeddings=cfg.max_positions,
        decoder_start_token_id=tokenizer.eos_token_id,
        forced_eos_token_id=tokenizer.eos_token_id,
        **ids,
    )
    return BartForConditionalGeneration(config)


def scratch_model(cfg: ModelConfig, texts: list[str], train_dir: Path, seed: int):
    """(tokenizer, model) for `model.base: scratch`; a resumed run reuses its tokenizer."""
    from transformers import PreTrainedTokenizerFast

    tok_dir = train_dir / "tokenizer"
    if (tok_dir / "tokenizer.json").exists():
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(tok_dir))
    else:
        tokenizer = train_tokenizer(texts, cfg.vocab_size, tok_dir)
    return tokenizer, build_model(cfg, tokenizer, seed)
