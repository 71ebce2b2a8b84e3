"""Causal-LM supervised fine-tuning through TRL's SFTTrainer: full or LoRA, loss on the answer.

Records become prompt/completion pairs through `kollm.prompts` (the recipe's templates, or the
tokenizer's chat template for `chat` records, one example per assistant turn); TRL masks the
prompt so the loss covers the answer (and its EOS) only. `train.packing` packs examples.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from kollm.config import Recipe
from kollm.prompts import PromptError, recipe_format, set_chat_template, training_examples
from kollm.train.common import (
    callbacks,
    common_args,
    load_kwargs,
    packing_strategy,
    torch_dtype,
    train_and_save,
)
from kollm.train.generation_eval import generation_eval
from kollm.train.scratch import scratch_model
from kollm.train.templates import fit_examples

log = logging.getLogger("kollm.train")
ATTENTION_IMPLEMENTATIONS = {"sdpa": "sdpa", "flash": "flash_attention_2", "eager": "eager"}


def to_examples(recipe: Recipe, records: list[dict[str, Any]], tokenizer=None) -> list[dict]:
    """Prompt/completion rows of the records, in the recipe's prompt format."""
    fmt = recipe_format(recipe)
    return [
        {"prompt": prompt, "completion": completion}
        for r in records
        for prompt, completion in training_examples(fmt, r, tokenizer)
    ]


def scratch_texts(recipe: Recipe, records: list[dict[str, Any]]) -> list[str]:
    """What a scratch tokenizer learns from: the rendered examples, or a chat's turns."""
    if recipe_format(recipe).style == "template":
        return [e["prompt"] + e["completion"] for e in to_examples(recipe, records)]
    texts = []
    for r in records:
        for key, value in r.items():
            if key == "id":
                continue
            if isinstance(value, str):
                texts.append(value)
            elif isinstance(value, list):
                texts += [m["content"] if isinstance(m, dict) else str(m) for m in value]
    return texts


def prepare_tokenizer(recipe: Recipe, tokenizer) -> None:
    """Padding, and for chat records the chat template (the recipe's, or the base's own)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if recipe.data.kind != "chat":
        return
    if recipe.train.chat_template:
        set_chat_template(tokenizer, recipe.train.chat_template)
    elif not getattr(tokenizer, "chat_template", None):
        raise PromptError(
            f"{recipe.model.base}: the tokenizer has no chat template, so chat records cannot "
            "be rendered; set train.chat_template (`chatml` or a Jinja template)"
        )


def load_causal(recipe: Recipe, records: list[dict[str, Any]], train_dir: Path):
    """(tokenizer, model) for the recipe: built from scratch, or loaded from a hub id/local dir."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = recipe.model
    if cfg.base == "scratch":
        tokenizer, model = scratch_model(
            cfg, scratch_texts(recipe, records), train_dir, recipe.train.seed
        )
        prepare_tokenizer(recipe, tokenizer)
        return tokenizer, model
    tokenizer = AutoTokenizer.from_pretrained(cfg.base, **load_kwargs(cfg))
    prepare_tokenizer(recipe, tokenizer)
    kwargs: dict[str, Any] = {
        **load_kwargs(cfg),
        "dtype": torch_dtype(cfg),
        "attn_implementation": ATTENTION_IMPLEMENTATIONS[recipe.train.attention],
    }
    if recipe.train.lora.quantize_4bit:
        kwargs["quantization_config"] = _bnb_4bit()
    model = _from_pretrained(AutoModelForCausalLM, cfg.base, kwargs)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:  # chat tokens were added
        grow_embeddings(model, len(tokenizer))
    return tokenizer, model


def grow_embeddings(model, size: int) -> None:
    """Rows for tokens the chat template added, each the mean of the rows the base trained
    (in the input embedding and an untied output layer): a start that neither dominates nor
    vanishes, and the same on every run (transformers' own samples around that mean)."""
    import torch

    old = model.get_input_embeddings().num_embeddings
    model.resize_token_embeddings(size, mean_resizing=False)
    layers = [model.get_input_embeddings(), model.get_output_embeddings()]
    with torch.no_grad():
        for layer in {id(x.weight): x for x in layers if x is not None}.values():
            layer.weight[old:] = layer.weight[:old].mean(dim=0)


def added_token_ids(recipe: Recipe, tokenizer) -> list[int]:
    """The ids `train.chat_template` added to the base's tokenizer: rows the base never
    trained, which the adapter must train and carry."""
    from transformers import AutoTokenizer

    if recipe.model.base == "scratch" or recipe.data.kind != "chat":
        return []
    before = len(AutoTokenizer.from_pretrained(recipe.model.base, **load_kwargs(recipe.model)))
    return list(range(before, len(tokenizer)))


def token_layers(model, ids: list[int]) -> dict[str, list[int]]:
    """PEFT's trainable_token_indices for `ids`: the input embedding, and the output layer
    when it is not tied to it (a tied one PEFT follows itself)."""
    names = {id(module): name.rsplit(".", 1)[-1] for name, module in model.named_modules()}
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    rows = {names[id(embed)]: ids}
    if head is not None and head.weight.data_ptr() != embed.weight.data_ptr():
        rows[names[id(head)]] = ids
    return rows


def _from_pretrained(auto_class, base: str, kwargs: dict[str, Any]):
    """The model with the recipe's attention kernel; a family transformers has no SDPA kernel
    for (Gemma 2, whose soft-capped scores SDPA cannot take) trains with eager attention,
    as transformers itself picks when no kernel is named."""
    try:
        return auto_class.from_pretrained(base, **kwargs)
    except ValueError as err:
        if kwargs.get("attn_implementation") != "sdpa" or "scaled_dot_product" not in str(err):
            raise
    log.warning("%s: no SDPA attention for this architecture; training with eager", base)
    return auto_class.from_pretrained(base, **{**kwargs, "attn_implementation": "eager"})


def _bnb_4bit():
    import torch
    from transformers import BitsAndBytesConfig

    if not torch.cuda.is_available():
        raise RuntimeError("train.lora.quantize_4bit (QLoRA) needs a CUDA GPU and bitsandbytes")
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def lora_config(recipe: Recipe, task_type: str = "CAUSAL_LM", new_rows=None):
    """The PEFT config of `train.lora`: LoRA, IA3, or prompt/prefix/P-tuning. `new_rows`
    (`token_layers`) are the rows of added tokens: LoRA trains and saves just those rows,
    IA3 the whole layers that hold them; prompt learning cannot train them and refuses."""
    import peft

    a = recipe.train.lora
    if new_rows and a.method in ("prompt_tuning", "prefix_tuning", "p_tuning"):
        raise ValueError(
            f"train.lora.method {a.method} trains virtual tokens only, not the rows of the"
            " tokens train.chat_template adds to this base; use method lora (or ia3)"
        )
    if a.method == "prefix_tuning" and task_type == "CAUSAL_LM":
        # The prefix's key/values lengthen the attention mask of every layer, which the causal-LM
        # training path of TRL + PEFT does not follow (trl#4168): the first step fails.
        raise ValueError(
            "train.lora.method: prefix_tuning works with train.method seq2seq only here; "
            "use p_tuning or prompt_tuning for causal models"
        )
    if a.method == "ia3":  # PEFT's per-architecture target modules
        return peft.IA3Config(task_type=task_type, modules_to_save=list(new_rows or {}) or None)
    if a.method in ("prompt_tuning", "prefix_tuning", "p_tuning"):
        cls = {
            "prompt_tuning": peft.PromptTuningConfig,
            "prefix_tuning": peft.PrefixTuningConfig,
            "p_tuning": peft.PromptEncoderConfig,
        }[a.method]
        return cls(task_type=task_type, num_virtual_tokens=a.num_virtual_tokens)
    return peft.LoraConfig(
        r=a.r,
        lora_alpha=a.alpha,
        lora_dropout=a.dropout,
        target_modules=a.target_modules,
        task_type=task_type,
        trainable_token_indices=new_rows or None,
    )


def train_sft(recipe: Recipe, splits: dict[str, list[dict[str, Any]]], resume: bool = False):
    """Supervised fine-tuning of a causal model, full or PEFT."""
    from datasets import Dataset
    from trl import SFTConfig

    from kollm.train.cpu_loss import CpuSFTTrainer

    t = recipe.train
    train_dir = recipe.train_dir
    train_dir.mkdir(parents=True, exist_ok=True)
    tokenizer, model = load_causal(recipe, splits["train"], train_dir)
    added = added_token_ids(recipe, tokenizer)
    new_rows = token_layers(model, added) if added else None
    train_examples = to_examples(recipe, splits["train"], tokenizer)
    eval_examples = to_examples(recipe, splits.get("dev", []), tokenizer)
    train_examples = fit_examples(tokenizer, train_examples, ("completion",), t.max_length)
    eval_examples = fit_examples(tokenizer, eval_examples, ("completion",), t.max_length)
    args = SFTConfig(
        **common_args(recipe, train_dir, bool(eval_examples)),
        max_length=t.max_length,
        packing=t.packing,
        packing_strategy=packing_strategy(t.packing_strategy),
        completion_only_loss=True,
    )
    trainer = CpuSFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train_examples),
        eval_dataset=Dataset.from_list(eval_examples) if eval_examples else None,
        processing_class=tokenizer,
        peft_config=lora_config(recipe, new_rows=new_rows) if t.lora.enabled else None,
        callbacks=callbacks(train_dir, generation_eval(recipe, splits.get("dev", []), tokenizer)),
    )
    return train_and_save(trainer, tokenizer, recipe, "sft", resume)
