"""An answer ends where the model ends its turn, not only at `tokenizer.eos_token`: Llama-3
ends a chat turn with `<|eot_id|>` (listed in generation_config.json beside its
`<|end_of_text|>` EOS), Gemma with `<end_of_turn>` (only in its chat template). Both fixture
bases are built here, their weights set by hand so that greedy decoding answers one ordinary
token "A" and then the end-of-turn token, and, past it, "A" and the end-of-turn again, to the
length limit: an engine that stopped only on the tokenizer's EOS would answer 20 tokens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kollm.engines import open_engine
from kollm.engines.base import GenerationParams, end_ids
from tests.conftest import REPO, _bpe_tokenizer, read_jsonl
from tests.engines.test_llamacpp import needs_server

LLAMA3_TEMPLATE = (
    "{{- bos_token }}{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)
QUESTION = [{"role": "user", "content": "주차 신청은 언제 하나요?"}]
ANSWER = "A"  # an ordinary token of both tokenizers


TINY = {  # a 2-layer model of the family, small enough to train and convert in seconds
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
}


def _tokenizer(special: list[str], template: str, **roles):
    from transformers import PreTrainedTokenizerFast

    rows = read_jsonl(REPO / "data" / "sample" / "chats.jsonl")
    texts = [m["content"] for r in rows for m in r["messages"]]
    tok = PreTrainedTokenizerFast(tokenizer_object=_bpe_tokenizer(texts, 600, special), **roles)
    tok.chat_template = template
    return tok


def _answer_then_end(model, answer: int, end: int, norm_offset: float = 0.0) -> None:
    """Weights under which greedy decoding answers `answer` after any other token, `end`
    after `answer`, and `answer` after `end`. With every layer's output projections zero, the
    last hidden state is the current token's embedding, normalised and scaled by the final
    norm's weight (diagonal d, `norm_offset` below what the model multiplies by: Gemma's
    is 1 + weight); with the embeddings tied (Gemma's GGUF has no separate head), token t
    follows token s by the score e_t . d . e_s. Every other token's embedding is (1, 0, 0),
    `answer`'s (2, 0, 3), `end`'s (0, 0, -2) and d = (1, 0, -1): after another token, scores
    1 / answer 2 / end 0; after `answer`, 2 / -5 / 6; after `end`, 0 / 6 / -4."""
    import torch

    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embed = model.get_input_embeddings().weight
        embed.zero_()
        embed[:, 0] = 1.0
        embed[answer, :3] = torch.tensor([2.0, 0.0, 3.0])
        embed[end, :3] = torch.tensor([0.0, 0.0, -2.0])
        norm = torch.zeros_like(model.model.norm.weight)
        norm[0], norm[2] = 1.0, -1.0
        model.model.norm.weight.copy_(norm - norm_offset)


@pytest.fixture(scope="module")
def llama3_base(tmp_path_factory) -> Path:
    """Llama-3-shaped: EOS `<|end_of_text|>`, turns closed by `<|eot_id|>`, and
    generation_config.json's eos_token_id listing both."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("llama3")
    special = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
    special += ["<|start_header_id|>", "<|end_header_id|>"]
    tok = _tokenizer(
        special, LLAMA3_TEMPLATE, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>"
    )
    tok.save_pretrained(str(out))
    ids = tok.convert_tokens_to_ids
    config = LlamaConfig(
        vocab_size=len(tok),
        **TINY,
        bos_token_id=ids("<|begin_of_text|>"),
        eos_token_id=ids("<|end_of_text|>"),
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    _answer_then_end(model, ids(ANSWER), ids("<|eot_id|>"))
    model.save_pretrained(str(out))
    GenerationConfig(
        bos_token_id=ids("<|begin_of_text|>"),
        eos_token_id=[ids("<|end_of_text|>"), ids("<|eot_id|>")],
    ).save_pretrained(str(out))
    return out


def _sentencepiece_tokenizer(out: Path):
    """Gemma's kind of tokenizer: a SentencePiece model (trained here on the sample chats,
    with byte fallback) whose pad, eos, bos and unk are ids 0-3 and whose turn markers are
    user-defined pieces, loaded by transformers from `out/tokenizer.model`."""
    import io

    import sentencepiece as spm
    from transformers import AutoTokenizer

    rows = read_jsonl(REPO / "data" / "sample" / "chats.jsonl")
    texts = [m["content"] for r in rows for m in r["messages"]] + ["user model A"] * 10
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        vocab_size=500,
        model_type="bpe",
        **{f"{role}_id": i for i, role in enumerate(("pad", "eos", "bos", "unk"))},
        **{f"{role}_piece": f"<{role}>" for role in ("pad", "eos", "bos", "unk")},
        user_defined_symbols=["<start_of_turn>", "<end_of_turn>"],
        byte_fallback=True,
        character_coverage=1.0,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    (out / "tokenizer.model").write_bytes(model.getvalue())
    roles = {f"{role}_token": f"<{role}>" for role in ("pad", "eos", "bos", "unk")}
    config = {"tokenizer_class": "GemmaTokenizer", **roles}
    (out / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    tok = AutoTokenizer.from_pretrained(str(out))
    tok.chat_template = GEMMA_TEMPLATE
    tok.save_pretrained(str(out))
    return tok


@pytest.fixture(scope="module")
def gemma_base(tmp_path_factory) -> Path:
    """Gemma-shaped: a SentencePiece tokenizer, EOS `<eos>` (the only end id its configs
    name), turns closed by `<end_of_turn>` in the chat template."""
    from transformers import GemmaConfig, GemmaForCausalLM

    out = tmp_path_factory.mktemp("gemma")
    tok = _sentencepiece_tokenizer(out)
    ids = tok.convert_tokens_to_ids
    config = GemmaConfig(
        vocab_size=len(tok),
        **TINY,
        head_dim=16,
        pad_token_id=ids("<pad>"),
        bos_token_id=ids("<bos>"),
        eos_token_id=ids("<eos>"),
        tie_word_embeddings=True,
    )
    model = GemmaForCausalLM(config)
    _answer_then_end(model, ids(ANSWER), ids("<end_of_turn>"), norm_offset=1.0)
    model.save_pretrained(str(out))
    return out


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
