"""Chat models end to end: multi-turn SFT on a Qwen2-shaped chat base, served with its history."""

from __future__ import annotations

import httpx
import yaml

from kollm.config import load_recipe, recipe_text
from kollm.pipeline.run import run_recipe
from kollm.registry import Registry
from tests.conftest import write_jsonl

OFFICES = {
    "마포구": "민원여권과",
    "강남구": "주차관리과",
    "서초구": "청소행정과",
    "노원구": "복지정책과",
}
QUESTION = "담당 부서가 어디예요?"


def _history(district: str) -> list[dict[str, str]]:
    return [
        {"role": "user", "content": f"저는 {district}에 살아요."},
        {"role": "assistant", "content": f"네, {district} 주민이시군요."},
        {"role": "user", "content": QUESTION},
    ]


def _answer(district: str) -> str:
    return f"{district}청 {OFFICES[district]}입니다."


def _chat_recipe(tmp_path, base) -> str:
    rows = [
        {"id": f"c{i}", "messages": [*_history(d), {"role": "assistant", "content": _answer(d)}]}
        for i, d in enumerate(OFFICES)
    ]
    write_jsonl(tmp_path / "chats.jsonl", rows)
    recipe = {
        "name": "chat",
        "output_dir": str(tmp_path / "run"),
        "data": {
            "input": {"train": str(tmp_path / "chats.jsonl"), "dev": str(tmp_path / "chats.jsonl")},
            "kind": "chat",
            # The conversations differ only in the district, and dev repeats train on purpose.
            "dedup": {"near": False, "exact": False},
            "report": {"tokenizer": None},
        },
        "model": {"base": str(base)},
        "train": {
            "max_steps": 200,
            "batch_size": 8,
            "learning_rate": 0.005,
            "logging_steps": 20,
            "save_steps": 1000,
            "group_by_length": False,
        },
        "eval": {"decoding": {"max_new_tokens": 16}},
        "registry": {"alias": "production"},
    }
    path = tmp_path / "chat.yaml"
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    return path


def _ask(server, messages) -> str:
    reply = httpx.post(
        server.base_url + "/v1/chat/completions",
        json={"model": "chat", "messages": messages, "max_tokens": 16, "temperature": 0},
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    return reply.json()["choices"][0]["message"]["content"]


def test_a_chat_model_answers_from_an_earlier_turn_only_when_the_history_is_sent(
    tmp_path, qwen2_chat_base, start_server
):
    path = _chat_recipe(tmp_path, qwen2_chat_base)
    home = tmp_path / "home"
    result = run_recipe(load_recipe(path), recipe_text(path), registry=Registry(home))
    assert result.stage("train").summary["last_loss"] < 0.1
    assert result.stage("eval").summary["model"]["score"] > 90  # the last turns, memorised
    version = Registry(home).get("chat@production")
    assert version.format.style == "chat_template"

    server = start_server(["chat@production"], engine="transformers", registry_home=home)
    with_history = {d: _ask(server, _history(d)) for d in OFFICES}
    assert with_history == {d: _answer(d) for d in OFFICES}
    # The same last question alone: one prompt, so one answer, right for one district at most.
    alone = _ask(server, [{"role": "user", "content": QUESTION}])
    assert sum(alone == _answer(d) for d in OFFICES) <= 1
    assert sum(with_history[d] == _answer(d) for d in OFFICES) == len(OFFICES)
