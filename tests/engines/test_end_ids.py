"""An answer ends where the model ends its turn, not only at `tokenizer.eos_token`: Llama-3
ends a chat turn with `<|eot_id|>` (listed in generation_config.json beside its
`<|end_of_text|>` EOS), Gemma with `<end_of_turn>` (only in its chat template). Both fixture
bases (`tests/families.py`) have weights set by hand so that greedy decoding answers one
ordinary token "A" and then the end-of-turn token, and, past it, "A" and the end-of-turn
again, to the length limit: an engine that stopped only on the tokenizer's EOS would answer
20 tokens."""

from __future__ import annotations

from pathlib import Path

import pytest

from kollm.engines import open_engine
from kollm.engines.base import GenerationParams, end_ids
from tests.engines.test_llamacpp import needs_server
from tests.families import ANSWER, SAMPLE, build_gemma2, build_llama3

QUESTION = SAMPLE


@pytest.fixture(scope="module")
def llama3_base(tmp_path_factory) -> Path:
    """Llama-3-shaped: EOS `<|end_of_text|>`, turns closed by `<|eot_id|>`, and
    generation_config.json's eos_token_id listing both."""
    return build_llama3(tmp_path_factory.mktemp("llama3"))


@pytest.fixture(scope="module")
def gemma_base(tmp_path_factory) -> Path:
    """Gemma-shaped: a SentencePiece tokenizer, EOS `<eos>` (the only end id its configs
    name), turns closed by `<end_of_turn>` in the chat template."""
    return build_gemma2(tmp_path_factory.mktemp("gemma"))


def _prompt(tokenizer) -> str:
    return tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False)


def _ids(tokenizer, *tokens: str) -> tuple[int, ...]:
    return tuple(tokenizer.convert_tokens_to_ids(t) for t in tokens)


def test_end_ids_are_the_eos_the_generation_config_and_the_templates_end_of_turn(
    llama3_base, gemma_base, qwen2_chat_base
):
    from transformers import AutoTokenizer

    llama = AutoTokenizer.from_pretrained(str(llama3_base))
    assert end_ids(llama3_base, llama) == _ids(llama, "<|end_of_text|>", "<|eot_id|>")
    gemma = AutoTokenizer.from_pretrained(str(gemma_base))
    assert end_ids(gemma_base, gemma) == _ids(gemma, "<eos>", "<end_of_turn>")
    qwen = AutoTokenizer.from_pretrained(str(qwen2_chat_base))
    assert end_ids(qwen2_chat_base, qwen) == _ids(qwen, "<|im_end|>")


def test_an_end_of_turn_counts_only_where_the_chat_template_uses_it(qwen2_chat_base, tmp_path):
    """A Qwen2 base tokenizer's EOS is `<|endoftext|>` while its template closes turns with
    `<|im_end|>`: both end an answer; without a template, `<|im_end|>` is a token like any."""
    from transformers import AutoTokenizer

    qwen = AutoTokenizer.from_pretrained(str(qwen2_chat_base))
    qwen.eos_token = "<|endoftext|>"
    bare = tmp_path / "bare"  # no config files: the tokenizer alone says
    bare.mkdir()
    assert end_ids(bare, qwen) == _ids(qwen, "<|endoftext|>", "<|im_end|>")
    qwen.chat_template = None
    assert end_ids(bare, qwen) == _ids(qwen, "<|endoftext|>")


@pytest.mark.parametrize("shape", ["llama3_base", "gemma_base"])
def test_the_fixtures_run_on_past_their_end_of_turn_when_only_eos_stops_them(shape, request):
    """What the engines' tests rest on: the model says "A", its end of turn, and goes on."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = request.getfixturevalue(shape)
    tok = AutoTokenizer.from_pretrained(str(base))
    model = AutoModelForCausalLM.from_pretrained(str(base))
    ids = tok(_prompt(tok), return_tensors="pt")["input_ids"]
    with torch.inference_mode():  # greedy, step by step, stopping on nothing
        for _ in range(6):
            ids = torch.cat([ids, model(input_ids=ids).logits[:, -1:].argmax(-1)], dim=1)
    new = ids[0, -6:].tolist()
    end = end_ids(base, tok)[-1]
    assert new == [tok.convert_tokens_to_ids(ANSWER), end] * 3


@pytest.mark.parametrize("kind", ["ctranslate2", "transformers"])
@pytest.mark.parametrize("shape", ["llama3_base", "gemma_base"])
def test_an_answer_stops_at_the_models_end_of_turn(kind, shape, request):
    engine = open_engine(kind, request.getfixturevalue(shape))
    engine.load()
    _assert_stops_after_the_answer(engine)


def _assert_stops_after_the_answer(engine) -> None:
    prompt = _prompt(engine.tokenizer)
    streamed: list[int] = []
    (answer,) = engine.generate(
        [prompt], GenerationParams(max_new_tokens=20), on_token=lambda _i, t: streamed.append(t)
    )
    assert (answer.text, answer.finish_reason) == (ANSWER, "stop")
    assert answer.completion_tokens == 2  # "A" and the end of turn, as an EOS counts
    assert streamed == [engine.tokenizer.convert_tokens_to_ids(ANSWER)]
    (cut,) = engine.generate([prompt], GenerationParams(max_new_tokens=1))
    assert (cut.text, cut.finish_reason, cut.completion_tokens) == (ANSWER, "length", 1)


@needs_server
@pytest.mark.parametrize("shape", ["llama3_base", "gemma_base"])
def test_llama_server_stops_at_the_end_of_turn_too(shape, request, tmp_path):
    """llama-server stops on its own: llama.cpp counts both fixtures' end of turn among the
    GGUF's end-of-generation tokens. It streams the token it stopped on, which the engine
    keeps from `on_token`, as the other engines do."""
    from kollm.cluster.export import export_model
    from kollm.engines.llamacpp_engine import LlamaCppEngine

    base = request.getfixturevalue(shape)
    gguf = export_model(str(base), "gguf", tmp_path, "f16").path
    engine = LlamaCppEngine(base, gguf, parallel=1, threads=1)
    engine.load()
    try:
        _assert_stops_after_the_answer(engine)
    finally:
        engine.unload()
