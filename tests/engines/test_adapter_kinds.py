"""Adapters of each kind on the engines: a seq2seq LoRA merges as an encoder-decoder; a
prompt-learning adapter (prompt or prefix tuning) cannot be merged, so CTranslate2, llama.cpp
and vLLM refuse it by name and the transformers engine serves it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kollm.engines import GenerationParams, choose_engine, open_engine
from kollm.engines.lora import AdapterNotMergeable, merge_lora

PROMPT = "#Person1#: 안녕하세요. 오늘 회의는 몇 시에 시작하나요?"


def save_adapter(base: Path, config, out: Path, seq2seq: bool = False) -> Path:
    """A PEFT adapter of `config` over `base`, with the base's tokenizer beside it."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    torch.manual_seed(1)
    cls = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
    get_peft_model(cls.from_pretrained(str(base)), config).save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(base)).save_pretrained(str(out))
    return out


def prompt_tuning(base: Path, out: Path) -> Path:
    from peft import PromptTuningConfig

    return save_adapter(base, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4), out)


def test_a_seq2seq_lora_merges_into_an_encoder_decoder_that_ctranslate2_serves(
    kobart_base, tmp_path
):
    import torch
    from peft import LoraConfig, PeftModel
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    adapter = save_adapter(
        kobart_base,
        LoraConfig(
            task_type="SEQ_2_SEQ_LM",
            r=4,
            target_modules=["q_proj", "v_proj"],
            init_lora_weights=False,
        ),
        tmp_path / "kobart-lora",
        seq2seq=True,
    )
    merged = merge_lora(adapter, tmp_path / "merged")
    config = json.loads((merged / "config.json").read_text())
    assert config["architectures"] == ["BartForConditionalGeneration"]  # the encoder kept
    tok = AutoTokenizer.from_pretrained(str(adapter))
    batch = tok(PROMPT, return_tensors="pt")
    decoder = torch.tensor([[tok.eos_token_id, 5, 6]])
    with torch.inference_mode():
        peft = PeftModel.from_pretrained(
            AutoModelForSeq2SeqLM.from_pretrained(str(kobart_base)), str(adapter)
        )
        want = peft(**batch, decoder_input_ids=decoder).logits
        got = AutoModelForSeq2SeqLM.from_pretrained(str(merged))(
            **batch, decoder_input_ids=decoder
        ).logits
    assert torch.allclose(want, got, atol=1e-4)  # the adapter's answer, folded in
    engine = open_engine("ctranslate2", adapter)
    (answer,) = engine.generate([PROMPT], GenerationParams(max_new_tokens=5))
    assert engine.is_encoder_decoder and answer.completion_tokens >= 1


@pytest.mark.parametrize("kind", ["ctranslate2", "llamacpp", "vllm"])
def test_engines_that_need_merged_weights_refuse_a_prompt_tuning_adapter_by_name(
    local_base, tmp_path, kind
):
    adapter = prompt_tuning(local_base, tmp_path / "prompt")
    with pytest.raises(AdapterNotMergeable) as err:
        open_engine(kind, adapter)
    assert "prompt_tuning adapter" in str(err.value)
    assert "serve with --engine transformers" in str(err.value)
    # as an adapter over a served base, too
    with pytest.raises(AdapterNotMergeable, match="--engine transformers"):
        open_engine(kind, local_base, adapters={"p": str(adapter)})
    with pytest.raises(AdapterNotMergeable, match="cannot be merged"):
        merge_lora(adapter, tmp_path / "merged")
    assert choose_engine("auto", [adapter])[0] == "transformers"


def test_the_transformers_engine_answers_with_prompt_and_prefix_tuning_adapters(
    local_base, tmp_path
):
    from peft import PrefixTuningConfig

    from kollm.engines.transformers_engine import TransformersEngine

    adapters = {
        "prompt": prompt_tuning(local_base, tmp_path / "prompt"),
        "prefix": save_adapter(
            local_base,
            PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
            tmp_path / "prefix",
        ),
    }
    params = GenerationParams(max_new_tokens=6)
    for name, adapter in adapters.items():
        engine = TransformersEngine(adapter)
        answered: list[int] = []
        (answer,) = engine.generate([PROMPT], params, lambda _, t, out=answered: out.append(t))
        assert answer.completion_tokens >= 1 and answered, name
        ids = engine.tokenize(PROMPT)
        assert answer.prompt_tokens == len(ids), name
        # Scored under the adapter, each greedy answer token is the likeliest at its place:
        # the scores line up with the tokens, not with the virtual tokens in front of them.
        (scores,) = engine.score([ids + answered], top_n=1)
        assert len(scores.logprobs) == len(ids + answered), name
        for at, token in enumerate(answered, start=len(ids)):
            assert token in scores.top[at], (name, at)
