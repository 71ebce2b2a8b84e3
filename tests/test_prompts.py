"""One prompt format: what the server builds for a request is what training built for a record."""

from __future__ import annotations

import json

import pytest

from kollm.config import load_recipe
from kollm.prompts import (
    PromptError,
    PromptFormat,
    load_format,
    recipe_format,
    render,
    request_prompt,
)
from kollm.serve.service import ServedModel
from kollm.train.sft import to_examples
from tests.conftest import read_jsonl

# A record of each kind, and the chat request a user would send for it (OpenAI's format).
CASES = {
    "dialogue_summary": (
        {
            "id": "d",
            "dialogue": "#Person1#: 안녕하세요.\n#Person2#: 네, 반갑습니다.",
            "summary": "인사.",
        },
        [{"role": "user", "content": "#Person1#: 안녕하세요.\n#Person2#: 네, 반갑습니다."}],
    ),
    "instruction": (
        {"id": "i", "instruction": "수도는 어디인가요?", "input": "", "output": "서울입니다."},
        [{"role": "user", "content": "수도는 어디인가요?"}],
    ),
    "instruction_with_input": (
        {"id": "j", "instruction": "존댓말로 바꾸세요.", "input": "밥 먹었어?", "output": "식사?"},
        [{"role": "user", "content": "존댓말로 바꾸세요.\n밥 먹었어?"}],
    ),
    "preference": (
        {"id": "p", "prompt": "인사해 주세요.", "chosen": "안녕하세요.", "rejected": "응."},
        [{"role": "user", "content": "인사해 주세요."}],
    ),
    "chat": (
        {
            "id": "c",
            "messages": [
                {"role": "system", "content": "민원 상담원입니다."},
                {"role": "user", "content": "마포구 주민인데 전입신고 하려고요."},
                {"role": "assistant", "content": "네, 안내해 드리겠습니다."},
                {"role": "user", "content": "어디로 가요?"},
                {"role": "assistant", "content": "마포구청 민원여권과입니다."},
            ],
        },
        [
            {"role": "system", "content": "민원 상담원입니다."},
            {"role": "user", "content": "마포구 주민인데 전입신고 하려고요."},
            {"role": "assistant", "content": "네, 안내해 드리겠습니다."},
            {"role": "user", "content": "어디로 가요?"},
        ],
    ),
}


class _Engine:
    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer


def _served(fmt: PromptFormat, tokenizer) -> ServedModel:
    return ServedModel("m", "m", "m:1", None, _Engine(tokenizer), None, prompt_format=fmt)


def _kind(case: str) -> str:
    return "instruction" if case.startswith("instruction") else case


def _recipe(repo, name: str, tmp_path, *overrides: str):
    return load_recipe(repo / "recipes" / name, [f"output_dir={tmp_path}", *overrides])


def _training_prompt(recipe, record, tokenizer) -> str:
    """The prompt of the record's last example, as SFT builds it."""
    return to_examples(recipe, [record], tokenizer)[-1]["prompt"]


@pytest.fixture(scope="module")
def chat_tokenizer(qwen2_chat_base):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(qwen2_chat_base))


def test_koalpaca_recipe_serves_the_prompt_it_trained_on(repo, tmp_path):
    recipe = _recipe(repo, "koalpaca_lora.yaml", tmp_path)
    for case in ("instruction", "instruction_with_input"):
        record, request = CASES[case]
        trained = _training_prompt(recipe, record, None)
        assert _served(recipe_format(recipe), None).prompt_for(request) == trained
        assert record["instruction"] in trained  # the old bug left {instruction} empty
    record, request = CASES["instruction_with_input"]
    assert "존댓말로 바꾸세요.\n밥 먹었어?" in _training_prompt(recipe, record, None)


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_record_kind_serves_its_training_prompt(case, repo, tmp_path, chat_tokenizer):
    record, request = CASES[case]
    kind = _kind(case)
    recipe = _recipe(
        repo,
        "demo.yaml",
        tmp_path,
        f"data.kind={kind}",
        "train.prompt_template=null",
        "train.response_template=null",
    )
    trained = _training_prompt(recipe, record, chat_tokenizer)
    served = _served(recipe_format(recipe), chat_tokenizer).prompt_for(request)
    assert served == trained
    assert request[-1]["content"].split("\n")[-1] in served


@pytest.mark.parametrize(
    "name", ["demo.yaml", "kobart_summary.yaml", "koalpaca_lora.yaml", "chat_lora.yaml"]
)
def test_every_shipped_recipe_serves_its_training_prompt(name, repo, tmp_path, chat_tokenizer):
    recipe = _recipe(repo, name, tmp_path)
    rows = read_jsonl(
        repo / recipe.data.input["train"]
        if isinstance(recipe.data.input, dict)
        else repo / recipe.data.input
    )[:20]
    fmt = recipe_format(recipe)
    for row in rows:
        if recipe.data.kind == "chat":
            request = row["messages"][:-1]
        elif recipe.data.kind == "instruction":
            request = [
                {
                    "role": "user",
                    "content": "\n".join(x for x in (row["instruction"], row["input"]) if x),
                }
            ]
        else:
            request = [{"role": "user", "content": row["dialogue"]}]
        trained = _training_prompt(recipe, row, chat_tokenizer)
        assert _served(fmt, chat_tokenizer).prompt_for(request) == trained, row["id"]


def test_every_chat_turn_is_an_example_with_its_history(repo, tmp_path, chat_tokenizer):
    recipe = _recipe(repo, "chat_lora.yaml", tmp_path)
    record, _ = CASES["chat"]
    examples = to_examples(recipe, [record], chat_tokenizer)
    assert len(examples) == 2  # two assistant turns
    first, second = examples
    assert "전입신고" in first["prompt"] and "어디로 가요" not in first["prompt"]
    assert first["completion"] == "네, 안내해 드리겠습니다.<|im_end|>"
    assert "전입신고" in second["prompt"] and second["prompt"].endswith("assistant\n")
    assert second["completion"] == "마포구청 민원여권과입니다.<|im_end|>"


def test_an_empty_field_alone_on_its_line_is_left_out():
    template = "### 질문: {instruction}\n{input}\n\n### 답변:"
    assert render(template, {"instruction": "a", "input": ""}) == "### 질문: a\n\n### 답변:"
    assert render(template, {"instruction": "a", "input": "b"}) == "### 질문: a\nb\n\n### 답변:"
    with pytest.raises(PromptError, match="input"):
        render(template, {"instruction": "a"})


def test_without_a_format_the_chat_template_or_a_script_of_every_turn(chat_tokenizer):
    turns = [
        {"role": "user", "content": "하나"},
        {"role": "assistant", "content": "둘"},
        {"role": "user", "content": "셋"},
    ]
    assert request_prompt(None, turns, None) == "user: 하나\nassistant: 둘\nuser: 셋\nassistant:"
    via_template = request_prompt(None, turns, chat_tokenizer)
    assert via_template.index("하나") < via_template.index("둘") < via_template.index("셋")


def test_chat_records_on_a_base_without_a_chat_template_name_the_fix(repo, tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from kollm.train.sft import prepare_tokenizer

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE()), eos_token="</s>")
    recipe = _recipe(repo, "chat_lora.yaml", tmp_path, "model.base=some/base")
    with pytest.raises(PromptError, match=r"train\.chat_template"):
        prepare_tokenizer(recipe, tok)
    prepare_tokenizer(_recipe(repo, "chat_lora.yaml", tmp_path, "train.chat_template=chatml"), tok)
    assert "<|im_start|>" in tok.apply_chat_template(
        [{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True
    )


def test_a_trained_model_dir_and_its_registry_version_keep_the_format(served_home):
    from kollm.registry import Registry

    version = Registry(served_home).get("tiny@production")
    fmt = version.format
    assert fmt == PromptFormat.from_json(json.dumps(fmt.__dict__))
    assert fmt.kind == "dialogue_summary" and "{dialogue}" in fmt.prompt_template
    assert load_format(version.artifact_path) == fmt
