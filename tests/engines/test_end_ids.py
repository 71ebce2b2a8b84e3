"""An answer ends where the model ends its turn, not only at `tokenizer.eos_token`: Llama-3
ends a chat turn with `<|eot_id|>` (listed in generation_config.json beside its
`<|end_of_text|>` EOS), Gemma with `<end_of_turn>` (only in its chat template). Both fixture
bases are built here, their weights set by hand so that greedy decoding answers one ordinary
token "A" and then the end-of-turn token, and, past it, "A" and the end-of-turn again, to the
length limit: an engine that stopped only on the tokenizer's EOS would answer 20 tokens."""

from __future__ import annotations

from pathlib import Path

import pytest

from kollm.engines import open_engine
from kollm.engines.base import GenerationParams, end_ids
from tests.conftest import REPO, _bpe_tokenizer, read_jsonl

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
ANSWER = "A"  # an ordinary token of the byte-level alphabet


def _tokenizer(special: list[str], template: str, **roles):
    from transformers import PreTrainedTokenizerFast

    rows = read_jsonl(REPO / "data" / "sample" / "chats.jsonl")
    texts = [m["content"] for r in rows for m in r["messages"]]
    tok = PreTrainedTokenizerFast(tokenizer_object=_bpe_tokenizer(texts, 600, special), **roles)
    tok.chat_template = template
    return tok


def _answer_then_end(model, answer: int, end: int) -> None:
    """Weights under which greedy decoding answers `answer` after any other token and `end`
    after `answer`. With every layer's output projections zero the residual stream (and so
    the last hidden state) is the current token's embedding: every token points along
    dimension 0 but `answer`, along 1; the head maps 0 to `answer` and 1 to `end`."""
    import torch

    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embed = model.model.embed_tokens.weight
        embed.zero_()
        embed[:, 0] = 1.0
        embed[answer, 0], embed[answer, 1] = 0.0, 1.0
        head = model.lm_head.weight
        head.zero_()
        head[answer, 0] = head[end, 1] = 10.0


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
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=ids("<|begin_of_text|>"),
        eos_token_id=ids("<|end_of_text|>"),
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    _answer_then_end(model, ids(ANSWER), ids("<|eot_id|>"))
    model.save_pretrained(str(out))
    GenerationConfig(
        bos_token_id=ids("<|begin_of_text|>"),
        eos_token_id=[ids("<|end_of_text|>"), ids("<|eot_id|>")],
    ).save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def gemma_base(tmp_path_factory) -> Path:
    """Gemma-shaped: EOS `<eos>` (the only end id its configs name), turns closed by
    `<end_of_turn>` in the chat template. A byte-level BPE stands in for Gemma's SentencePiece
    model (none can be fetched offline); the special tokens and their roles are Gemma's."""
    from transformers import GemmaConfig, GemmaForCausalLM

    out = tmp_path_factory.mktemp("gemma")
    special = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    tok = _tokenizer(
        special,
        GEMMA_TEMPLATE,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
    )
    tok.save_pretrained(str(out))
    ids = tok.convert_tokens_to_ids
    config = GemmaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        pad_token_id=ids("<pad>"),
        bos_token_id=ids("<bos>"),
        eos_token_id=ids("<eos>"),
        tie_word_embeddings=False,
    )
    model = GemmaForCausalLM(config)
    _answer_then_end(model, ids(ANSWER), ids("<end_of_turn>"))
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
