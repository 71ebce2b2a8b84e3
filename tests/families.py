"""Tiny random-weight bases of the model families Korean organisations pick, each with the
family's real config class, tokenizer type and chat template (abridged to the parts a chat
uses), built here with no download.

Their weights are set by hand so that greedy decoding answers one ordinary token, the
family's end of turn, and (past it) the same token and end again to the length limit: a test
sees at once whether an engine stopped where the family ends a turn. Every layer's output
projections are zero, so the last hidden state is the current token's embedding, normalised
by the final norm, and the output head alone decides the next token (`_route`).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import REPO, _bpe_tokenizer, read_jsonl

LLAMA3_TEMPLATE = (
    "{{- bos_token }}{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
CHATML_DEFAULT_SYSTEM = (  # Qwen2.5: a default system turn when the chat has none
    "{%- if messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are Qwen, a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
QWEN3_TEMPLATE = (  # Qwen3: no default system turn; enable_thinking=false writes an empty think
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}"
)
GEMMA2_TEMPLATE = (  # Gemma 2: no system role at all
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)
GEMMA3_TEMPLATE = (  # Gemma 3: a system turn is folded into the first user turn
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{% set first = messages[0]['content'] + '\\n\\n' %}{% set loop_messages = messages[1:] %}"
    "{% else %}{% set first = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\\n' + (first if loop.first else '')"
    " + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)
SOLAR_TEMPLATE = (  # SOLAR-instruct: the answer ends with the tokenizer's `</s>`
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ '### System:\\n' + message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '### User:\\n' + message['content'] + '\\n\\n' }}"
    "{% else %}{{ '### Assistant:\\n' + message['content'] + eos_token + '\\n\\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '### Assistant:\\n' }}{% endif %}"
)
EXAONE_TEMPLATE = (  # EXAONE 4: [|role|] headers, turns closed by [|endofturn|]
    "{% for message in messages %}"
    "{{ '[|' + message['role'] + '|]' + message['content'] + '[|endofturn|]\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '[|assistant|]' }}{% endif %}"
)

TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
}
ANSWER = "A"  # an ordinary token of every fixture's tokenizer
SAMPLE = [{"role": "user", "content": "주차 신청은 언제 하나요?"}]


@dataclass(frozen=True)
class Family:
    name: str
    build: Callable[[Path], Path]
    end: str  # the token that ends an answer
    tokenizer: str  # what a user would call its tokenizer
    chat_template: bool = True  # whether the base comes with one
    ct2: bool = True  # whether CTranslate2 has a loader for it
    gguf_arch: str | None = None  # llama.cpp's architecture name; None: no converter


def _texts() -> list[str]:
    rows = read_jsonl(REPO / "data" / "sample" / "chats.jsonl")
    return [m["content"] for r in rows for m in r["messages"]] + ["user model A"] * 10


LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
    r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def bpe_tokenizer(special: list[str], template: str | None, split: str | None = None, **roles):
    """A byte-level BPE tokenizer (tokenizer.json, as Llama-3, Qwen and GPT-NeoX ship); with
    `split`, the family's own regex splits the text before the bytes are mapped."""
    from tokenizers import Regex, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = _bpe_tokenizer(_texts(), 600, special)
    if split:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), "isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, **roles)
    tok.chat_template = template
    return tok


def sentencepiece_tokenizer(out: Path, roles: dict[str, int], tokenizer_class: str, pieces=()):
    """A SentencePiece model with byte fallback (as Gemma, Llama-2 and SOLAR ship it), its
    special pieces at the ids `roles` gives, loaded by transformers from tokenizer.model."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    out.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_texts()),
        model_writer=model,
        vocab_size=500,
        model_type="bpe",
        **{f"{role}_id": i for role, i in roles.items()},
        **{f"{role}_piece": _piece(role, tokenizer_class) for role in roles},
        user_defined_symbols=list(pieces),
        byte_fallback=True,
        character_coverage=1.0,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    (out / "tokenizer.model").write_bytes(model.getvalue())
    tokens = {f"{role}_token": _piece(role, tokenizer_class) for role in roles}
    config = {"tokenizer_class": tokenizer_class, **tokens}
    (out / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return AutoTokenizer.from_pretrained(str(out))


def _piece(role: str, tokenizer_class: str) -> str:
    if tokenizer_class == "LlamaTokenizer":  # Llama-2's <unk>, <s>, </s>
        return {"bos": "<s>", "eos": "</s>"}.get(role, f"<{role}>")
    return f"<{role}>"


def answer_id(tok) -> int:
    """The id the template's answer "A" starts with (SentencePiece may write it "▁A")."""
    prompt = tok.apply_chat_template(SAMPLE, add_generation_prompt=True, tokenize=False)
    full = prompt + ANSWER
    ids = tok(full, add_special_tokens=False)["input_ids"]
    return ids[len(tok(prompt, add_special_tokens=False)["input_ids"])]


def _route(model, answer: int, end: int, norm, norm_offset: float = 0.0) -> None:
    """After any other token the head scores `answer` highest, after `answer` `end`, after
    `end` `answer`. `norm` is the final norm; `norm_offset` what the model adds to its weight
    (Gemma multiplies by 1 + weight)."""
    import torch

    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    with torch.no_grad():
        if embed.data_ptr() == head.data_ptr():
            _route_tied(embed, answer, end, norm.weight, norm_offset)
            return
        # Untied: other tokens, `answer` and `end` embed as three orthogonal zero-mean
        # directions (a LayerNorm keeps them as an RMSNorm does) and each head row is the sum
        # of the directions it should win after.
        u = torch.zeros(3, model.config.hidden_size)
        for i in range(3):
            u[i, 2 * i], u[i, 2 * i + 1] = 1.0, -1.0
        embed[:] = u[0]
        embed[answer], embed[end] = u[1], u[2]
        head.zero_()
        head[answer], head[end] = u[0] + u[2], u[1]
        norm.weight.fill_(1.0 - norm_offset)
        if getattr(norm, "bias", None) is not None:
            norm.bias.zero_()


def _route_tied(embed, answer: int, end: int, weight, norm_offset: float) -> None:
    """A tied head scores token t after token s by e_t . d . e_s (d the final norm's
    weight), which no positive d can route round a cycle: d = (1, 0, -1) with every other
    token at (1, 0, 0), `answer` at (2, 0, 3) and `end` at (0, 0, -2) scores, after another
    token, 1 / 2 / 0 (other / answer / end); after `answer` 2 / -5 / 6; after `end` 0 / 6 / -4."""
    import torch

    embed.zero_()
    embed[:, 0] = 1.0
    embed[answer, :3] = torch.tensor([2.0, 0.0, 3.0])
    embed[end, :3] = torch.tensor([0.0, 0.0, -2.0])
    d = torch.zeros_like(weight)
    d[0], d[2] = 1.0, -1.0
    weight.copy_(d - norm_offset)


def _silence(layers, *names: str) -> None:
    """Zero each layer's output projections (weights and biases): the residual stream then
    carries the token's embedding alone, whatever attention and the MLP compute."""
    import torch

    with torch.no_grad():
        for layer in layers:
            for name in names:
                module = layer.get_submodule(name)
                module.weight.zero_()
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()


def _save(model, tok, out: Path, end: str, norm, norm_offset: float = 0.0, **generation) -> Path:
    """Route the weights to answer "A" then `end`, and save model, tokenizer and (when given)
    generation_config.json as a hub model dir."""
    from transformers import GenerationConfig

    _route(model, answer_id(tok), tok.convert_tokens_to_ids(end), norm, norm_offset)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    if generation:
        GenerationConfig(**generation).save_pretrained(str(out))
    return out


def _llama_like(model, tok, out: Path, end: str, norm_offset: float = 0.0, **generation):
    _silence(model.model.layers, "self_attn.o_proj", "mlp.down_proj")
    return _save(model, tok, out, end, model.model.norm, norm_offset, **generation)


def build_llama3(out: Path) -> Path:
    """Llama-3: byte-level BPE, EOS `<|end_of_text|>`, turns closed by `<|eot_id|>`, which
    generation_config.json lists beside the EOS."""
    from transformers import LlamaConfig, LlamaForCausalLM

    special = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
    special += ["<|start_header_id|>", "<|end_header_id|>"]
    tok = bpe_tokenizer(
        special,
        LLAMA3_TEMPLATE,
        split=LLAMA3_SPLIT,
        bos_token="<|begin_of_text|>",
        eos_token="<|end_of_text|>",
    )
    ids = tok.convert_tokens_to_ids
    bos, eos = ids("<|begin_of_text|>"), ids("<|end_of_text|>")
    config = LlamaConfig(
        vocab_size=len(tok), **TINY, bos_token_id=bos, eos_token_id=eos, tie_word_embeddings=True
    )
    model = LlamaForCausalLM(config)
    return _llama_like(
        model, tok, out, "<|eot_id|>", bos_token_id=bos, eos_token_id=[eos, ids("<|eot_id|>")]
    )


def _chatml_tokenizer(template: str, extra=()):
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *extra]
    return bpe_tokenizer(
        special,
        template,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=special[1:],
    )


def build_qwen2(out: Path) -> Path:
    """Qwen2.5: byte-level BPE, ChatML with a default system turn, `<|im_end|>` its EOS."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = _chatml_tokenizer(CHATML_DEFAULT_SYSTEM)
    config = Qwen2Config(
        vocab_size=len(tok),
        **TINY,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    return _llama_like(Qwen2ForCausalLM(config), tok, out, "<|im_end|>")


def build_qwen3(out: Path) -> Path:
    """Qwen3: ChatML without a default system turn, `<think>` tokens, q/k norms."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tok = _chatml_tokenizer(QWEN3_TEMPLATE, ("<think>", "</think>"))
    config = Qwen3Config(
        vocab_size=len(tok),
        **TINY,
        head_dim=16,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    return _llama_like(Qwen3ForCausalLM(config), tok, out, "<|im_end|>")


GEMMA_ROLES = {"pad": 0, "eos": 1, "bos": 2, "unk": 3}


def _gemma_tokenizer(out: Path, template: str):
    tok = sentencepiece_tokenizer(
        out, GEMMA_ROLES, "GemmaTokenizer", ("<start_of_turn>", "<end_of_turn>")
    )
    tok.chat_template = template
    return tok


def build_gemma2(out: Path) -> Path:
    """Gemma 2: SentencePiece, `<end_of_turn>` only in the template, no system role, logit
    soft-capping, a norm that multiplies by 1 + weight."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    tok = _gemma_tokenizer(out, GEMMA2_TEMPLATE)
    config = Gemma2Config(
        vocab_size=len(tok), **TINY, head_dim=16, **_sp_ids(tok), tie_word_embeddings=True
    )
    return _llama_like(Gemma2ForCausalLM(config), tok, out, "<end_of_turn>", norm_offset=1.0)


def build_gemma3(out: Path) -> Path:
    """Gemma 3 (text): as Gemma 2, with the system turn folded into the first user turn."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    tok = _gemma_tokenizer(out, GEMMA3_TEMPLATE)
    config = Gemma3TextConfig(
        vocab_size=len(tok), **TINY, head_dim=16, **_sp_ids(tok), tie_word_embeddings=True
    )
    return _llama_like(Gemma3ForCausalLM(config), tok, out, "<end_of_turn>", norm_offset=1.0)


def _sp_ids(tok) -> dict[str, int]:
    return {
        "pad_token_id": tok.pad_token_id,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
    }


def build_solar(out: Path) -> Path:
    """Llama-2-ko / SOLAR: Llama's SentencePiece tokenizer with byte fallback (`<unk>`,
    `<s>`, `</s>` at 0-2, no pad), an untied head, SOLAR's `### User:` template whose answer
    ends with `</s>`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = sentencepiece_tokenizer(out, {"unk": 0, "bos": 1, "eos": 2}, "LlamaTokenizer")
    tok.chat_template = SOLAR_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(tok),
        **TINY,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
    )
    return _llama_like(LlamaForCausalLM(config), tok, out, "</s>")


def build_polyglot(out: Path) -> Path:
    """GPT-NeoX / Polyglot-ko: byte-level BPE with `<|endoftext|>`, no chat template,
    LayerNorms with biases, parallel residuals, an untied head."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    tok = bpe_tokenizer(["<|endoftext|>"], None, eos_token="<|endoftext|>")
    config = GPTNeoXConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=512,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
    )
    model = GPTNeoXForCausalLM(config)
    _silence(model.gpt_neox.layers, "attention.dense", "mlp.dense_4h_to_h")
    # Without a template a chat answer ends with the EOS (kollm adds ChatML when training);
    # the fixture answers "A" then EOS after a plain prompt.
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    model_dir = _save(model, tok, out, "<|endoftext|>", model.gpt_neox.final_layer_norm)
    _drop_chat_template(model_dir)
    return model_dir


def _drop_chat_template(model_dir: Path) -> None:
    """A base that never had a chat template (the routing above needed one to find "A")."""
    (model_dir / "chat_template.jinja").unlink(missing_ok=True)
    path = model_dir / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config.pop("chat_template", None)
    path.write_text(json.dumps(config, ensure_ascii=False, indent=2), encoding="utf-8")


def build_exaone4(out: Path) -> Path:
    """EXAONE 4: byte-level BPE, `[|endofturn|]` closing each turn, its own config class
    (present in transformers since 4.54; the test skips where it is not)."""
    from transformers import Exaone4Config, Exaone4ForCausalLM

    special = ["[PAD]", "[BOS]", "[|endofturn|]", "[UNK]"]
    special += ["[|system|]", "[|user|]", "[|assistant|]"]
    tok = bpe_tokenizer(
        special,
        EXAONE_TEMPLATE,
        pad_token="[PAD]",
        bos_token="[BOS]",
        eos_token="[|endofturn|]",
        unk_token="[UNK]",
    )
    config = Exaone4Config(
        vocab_size=len(tok),
        **TINY,
        head_dim=16,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=True,
    )
    return _llama_like(Exaone4ForCausalLM(config), tok, out, "[|endofturn|]")


FAMILIES = {
    f.name: f
    for f in (
        Family("llama3", build_llama3, "<|eot_id|>", "byte-level BPE", gguf_arch="llama"),
        Family("qwen2.5", build_qwen2, "<|im_end|>", "byte-level BPE", gguf_arch="qwen2"),
        Family("qwen3", build_qwen3, "<|im_end|>", "byte-level BPE", gguf_arch="qwen3"),
        Family("gemma2", build_gemma2, "<end_of_turn>", "SentencePiece", gguf_arch="gemma2"),
        Family("gemma3", build_gemma3, "<end_of_turn>", "SentencePiece", gguf_arch="gemma3"),
        Family("solar", build_solar, "</s>", "SentencePiece", gguf_arch="llama"),
        Family(
            "polyglot-ko",
            build_polyglot,
            "<|endoftext|>",
            "byte-level BPE",
            chat_template=False,
            gguf_arch="gptneox",
        ),
        Family(
            "exaone4",
            build_exaone4,
            "[|endofturn|]",
            "byte-level BPE",
            ct2=False,
            gguf_arch="exaone4",
        ),
    )
}
