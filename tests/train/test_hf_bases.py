"""The shipped recipes pointed at Hugging Face-format local bases, as a user would run them."""

from __future__ import annotations

import httpx

from kollm.config import load_recipe, recipe_text
from kollm.engines.base import GenerationParams
from kollm.engines.transformers_engine import TransformersEngine
from kollm.pipeline.run import run_recipe
from kollm.prompts import record_prompt
from kollm.registry import Registry
from tests.conftest import read_jsonl


def test_kobart_recipe_on_a_local_bart_base_trains_registers_and_serves(
    repo, tmp_path, kobart_base, start_server
):
    path = repo / "recipes" / "kobart_summary.yaml"
    recipe = load_recipe(
        path,
        [
            f"model.base={kobart_base}",
            f"output_dir={tmp_path / 'run'}",
            "train.max_steps=20",
            "train.max_train_samples=32",
            "train.batch_size=8",
            "train.learning_rate=0.003",
            "eval.max_samples=4",
            "eval.decoding.num_beams=1",
            "eval.decoding.max_new_tokens=12",
            "data.report.tokenizer=null",
        ],
    )
    home = tmp_path / "home"
    result = run_recipe(recipe, recipe_text(path), registry=Registry(home))
    assert result.stage("train").summary["method"] == "seq2seq"
    version = Registry(home).get("kobart-summary@staging")
    assert version.format.prompt_template == "{dialogue}" and version.base_model == str(kobart_base)

    record = read_jsonl(recipe.data_dir / "dev.jsonl")[0]
    engine = TransformersEngine(version.artifact_path)
    params = GenerationParams(max_new_tokens=12)
    (expected,) = engine.generate([record_prompt(version.format, record)], params)
    server = start_server(["kobart-summary@staging"], engine="transformers", registry_home=home)
    reply = httpx.post(
        server.base_url + "/v1/chat/completions",
        json={
            "model": "kobart-summary",
            "messages": [{"role": "user", "content": record["dialogue"]}],
            "max_tokens": 12,
            "temperature": 0,
        },
        timeout=60,
    ).json()
    assert reply["choices"][0]["message"]["content"] == expected.text
    assert reply["model_version"] == "kobart-summary:1"


def test_chat_lora_recipe_on_a_qwen2_chat_base(repo, tmp_path, qwen2_chat_base, start_server):
    path = repo / "recipes" / "chat_lora.yaml"
    recipe = load_recipe(
        path,
        [
            f"model.base={qwen2_chat_base}",
            f"output_dir={tmp_path / 'run'}",
            "train.max_steps=6",
            "train.max_train_samples=24",
            "eval.max_samples=4",
            "eval.decoding.max_new_tokens=8",
            "data.report.tokenizer=null",
        ],
    )
    home = tmp_path / "home"
    result = run_recipe(recipe, recipe_text(path), registry=Registry(home))
    assert result.stage("train").summary["is_adapter"] is True
    version = Registry(home).get("chat-lora@staging")
    assert version.format.style == "chat_template"
    server = start_server(["chat-lora@staging"], engine="transformers", registry_home=home)
    turns = read_jsonl(recipe.data_dir / "dev.jsonl")[0]["messages"][:-1]
    reply = httpx.post(
        server.base_url + "/v1/chat/completions",
        json={"model": "chat-lora", "messages": turns, "max_tokens": 8, "temperature": 0},
        timeout=60,
    )
    assert reply.status_code == 200 and reply.json()["model_version"] == "chat-lora:1"
    # Every turn went through the base's chat template (its default system turn included).
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(version.artifact_path)
    prompt = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    assert "You are a helpful assistant." in prompt or turns[0]["role"] == "system"
    assert reply.json()["usage"]["prompt_tokens"] == len(tokenizer(prompt)["input_ids"])
