"""A registered version never changes under its alias: retraining into the same run dir and
rolling back serves exactly what the first version answered."""

from __future__ import annotations

import httpx

from kollm.config import load_recipe
from kollm.engines.base import GenerationParams
from kollm.engines.transformers_engine import TransformersEngine
from kollm.registry import Registry
from kollm.train import run_training

QUESTION = "#Person1#: 오늘 도서관에 가요?\n#Person2#: 네, 책을 빌리러 가요."


def _answer(model_dir) -> str:
    engine = TransformersEngine(model_dir)
    prompt = f"다음 대화를 요약하세요.\n{QUESTION}\n요약:"
    # Sampled with a seed: two different weight sets then answer differently, yet repeatably.
    params = GenerationParams(max_new_tokens=12, do_sample=True, temperature=1.0, seed=3)
    (out,) = engine.generate([prompt], params)
    return out.text


def test_rollback_serves_the_first_version_after_a_retrain_into_the_same_dir(
    tiny_recipe, tmp_path, start_server
):
    home = tmp_path / "home"
    registry = Registry(home)
    first = run_training(load_recipe(tiny_recipe, ["train.max_steps=12"]))
    registry.promote("tiny", registry.register("tiny", first.model_dir).version)
    first_answer = _answer(first.model_dir)
    second = run_training(load_recipe(tiny_recipe, ["train.max_steps=30", "train.seed=7"]))
    assert second.model_dir == first.model_dir  # the run dir was overwritten
    registry.promote("tiny", registry.register("tiny", second.model_dir).version)
    assert _answer(second.model_dir) != first_answer  # else this test could not fail
    assert registry.rollback("tiny").version == 1

    server = start_server(["tiny@production"], engine="transformers", registry_home=home)
    reply = httpx.post(
        server.base_url + "/v1/chat/completions",
        json={
            "model": "tiny",
            "messages": [{"role": "user", "content": QUESTION}],
            "max_tokens": 12,
            "temperature": 1.0,
            "seed": 3,
        },
        timeout=60,
    ).json()
    assert reply["model_version"] == "tiny:1"
    assert reply["choices"][0]["message"]["content"] == first_answer


def test_a_server_refuses_a_version_whose_stored_weights_were_tampered(
    tiny_recipe, tmp_path, start_server
):
    from pathlib import Path

    home = tmp_path / "home"
    registry = Registry(home)
    result = run_training(load_recipe(tiny_recipe, ["train.max_steps=2"]))
    version = registry.register("tiny", result.model_dir)
    weights = Path(version.artifact_path) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    server = start_server(["tiny:1"], engine="transformers", registry_home=home, wait_ready=False)
    health = httpx.get(server.base_url + "/health", timeout=10)
    for _ in range(100):
        health = httpx.get(server.base_url + "/health", timeout=10)
        if health.json().get("status") == "failed":
            break
        import time

        time.sleep(0.1)
    assert health.status_code == 503
    assert (
        "tiny:1" in health.json()["reason"]
        and "model.safetensors changed" in health.json()["reason"]
    )
