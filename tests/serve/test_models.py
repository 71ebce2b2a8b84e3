import time

import openai
import pytest

from kollm.registry import Registry


@pytest.fixture
def two_adapters(local_base, tmp_path):
    """Two LoRA adapters over one base, with different random weights (so different answers)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dirs = {}
    for name, seed in (("a", 1), ("b", 2)):
        torch.manual_seed(seed)
        model = get_peft_model(
            AutoModelForCausalLM.from_pretrained(str(local_base)),
            LoraConfig(r=4, lora_alpha=64, target_modules="all-linear", init_lora_weights=False),
        )
        dirs[name] = tmp_path / f"adapter_{name}"
        model.save_pretrained(str(dirs[name]))
        AutoTokenizer.from_pretrained(str(local_base)).save_pretrained(str(dirs[name]))
    return dirs


def test_two_lora_adapters_answer_differently_over_one_base(start_server, local_base, two_adapters):
    adapters = {name: str(path) for name, path in two_adapters.items()}
    server = start_server(refs=[str(local_base)], engine="transformers", adapters=adapters)
    api = openai.OpenAI(base_url=server.base_url + "/v1", api_key="x", max_retries=0)
    listed = [m for m in api.models.list().data if not m.model_extra.get("task")]
    assert {m.id for m in listed} == {"base", "base:a", "base:b"}
    parents = {m.id: m.model_extra["parent"] for m in listed}
    assert parents == {"base": None, "base:a": "base", "base:b": "base"}
    context = server.manager.models["base"].engine.context_length
    assert {m.model_extra["max_model_len"] for m in listed} == {context}
    messages = [{"role": "user", "content": "#Person1#: 안녕하세요, 예약하고 싶어요."}]

    def ask(model):
        reply = api.chat.completions.create(
            model=model, messages=messages, max_tokens=12, temperature=0
        )
        return reply.choices[0].message.content

    answers = {m: ask(m) for m in ("base:a", "base:b", "base")}
    assert answers["base:a"] != answers["base:b"]
    assert ask("base:a") == answers["base:a"]  # switching back and forth is stable
    engine = server.manager.models["base"].engine
    assert set(engine.model.peft_config) == {"a", "b"}  # one base, both adapters loaded on it
    # The plain base id is the base weights alone, whichever adapter ran last.
    alone = start_server(refs=[str(local_base)], engine="transformers")
    api_alone = openai.OpenAI(base_url=alone.base_url + "/v1", api_key="x", max_retries=0)
    reply = api_alone.chat.completions.create(
        model="base", messages=messages, max_tokens=12, temperature=0
    )
    assert answers["base"] == reply.choices[0].message.content
    assert answers["base"] not in (answers["base:a"], answers["base:b"])


def test_adapters_load_and_unload_while_serving(start_server, local_base, two_adapters, tmp_path):
    import shutil

    import httpx

    root = tmp_path / "adapters"
    root.mkdir()
    shutil.copytree(two_adapters["a"], root / "a")
    (root / "escape").symlink_to(two_adapters["b"])  # a link out of the root
    home = tmp_path / "home"
    Registry(home).register("ko-lora", two_adapters["b"])
    server = start_server(
        refs=[str(local_base)],
        engine="transformers",
        registry_home=home,
        admin_keys=("admin-secret",),
        adapter_root=root,
    )
    admin = {"Authorization": "Bearer admin-secret"}

    def post(path, body, headers=admin):
        return httpx.post(server.base_url + path, json=body, headers=headers, timeout=60)

    def ask(model):
        body = {
            "model": model,
            "messages": [{"role": "user", "content": "안녕하세요"}],
            "max_tokens": 10,
            "temperature": 0,
        }
        return post("/v1/chat/completions", body)  # an admin key calls the API too

    base_answer = ask("base").json()["choices"][0]["message"]["content"]
    assert (
        post("/v1/load_lora_adapter", {"lora_name": "a", "lora_path": "a"}, {}).status_code == 401
    )
    for bad in ("../adapters/a/../../x", str(two_adapters["a"]), "escape", "missing"):
        refused = post("/v1/load_lora_adapter", {"lora_name": "x", "lora_path": bad})
        assert refused.status_code == 400, bad
        assert refused.json()["error"]["param"] == "lora_path"

    assert post("/v1/load_lora_adapter", {"lora_name": "a", "lora_path": "a"}).status_code == 200
    loaded = post("/v1/load_lora_adapter", {"lora_name": "ko-lora:1", "lora_path": "ko-lora:1"})
    assert loaded.status_code == 200, loaded.text
    listed = httpx.get(server.base_url + "/v1/models", headers=admin).json()["data"]
    ids = {m["id"] for m in listed}
    assert {"base", "base:a", "base:ko-lora:1"} <= ids
    with_a = ask("base:a").json()["choices"][0]["message"]["content"]
    with_b = ask("base:ko-lora:1").json()["choices"][0]["message"]["content"]
    assert len({base_answer, with_a, with_b}) == 3
    assert ask("base").json()["choices"][0]["message"]["content"] == base_answer

    assert post("/v1/unload_lora_adapter", {"lora_name": "a"}).status_code == 200
    assert ask("base:a").status_code == 404
    assert post("/v1/unload_lora_adapter", {"lora_name": "a"}).status_code == 400

    # A registered adapter version can be given at start too, like a directory.
    started = start_server(
        refs=[str(local_base)],
        engine="transformers",
        registry_home=home,
        adapters={"ko": "ko-lora:1"},
    )
    reply = httpx.post(
        started.base_url + "/v1/chat/completions",
        json={
            "model": "base:ko",
            "messages": [{"role": "user", "content": "안녕하세요"}],
            "max_tokens": 10,
            "temperature": 0,
        },
        timeout=60,
    )
    assert reply.json()["choices"][0]["message"]["content"] == with_b


@pytest.mark.usefixtures("served_store")  # aliases resolved on both stores
def test_a_moved_alias_is_served_without_restart(start_server, served_home, tmp_path):
    import shutil

    registry = Registry(served_home)
    v1 = registry.get("tiny@production")
    copy = tmp_path / "v2"
    shutil.copytree(v1.artifact_path, copy)
    v2 = registry.register("tiny", copy, recipe_text=v1.recipe_text)
    server = start_server(alias_poll_s=0.2)
    api = openai.OpenAI(base_url=server.base_url + "/v1", api_key="x", max_retries=0)
    messages = [{"role": "user", "content": "안녕"}]

    def version():
        return api.chat.completions.create(
            model="tiny", messages=messages, max_tokens=2
        ).model_extra["model_version"]

    try:
        assert version() == v1.ref
        registry.promote("tiny", v2.version)
        deadline = time.monotonic() + 60
        while version() != v2.ref:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        registry.rollback("tiny")
        while version() != v1.ref:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        if registry.get("tiny@production").version != v1.version:
            registry.promote("tiny", v1.version)


def test_vllm_engine_live(local_base):
    """Runs only where vllm (the `gpu` extra) and a CUDA GPU are present."""
    pytest.importorskip("vllm", reason="vllm is an optional extra for GPU machines")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("vllm needs a CUDA GPU")
    from kollm.engines.base import GenerationParams
    from kollm.engines.vllm_engine import VllmEngine

    engine = VllmEngine(local_base, max_model_len=256)
    engine.load()
    try:
        (answer,) = engine.generate(["안녕하세요"], GenerationParams(max_new_tokens=4))
        assert answer.completion_tokens >= 1
    finally:
        engine.unload()


def test_serve_settings_come_from_the_recipe_and_the_command_line(tmp_path):
    from kollm.config import load_recipe
    from kollm.serve.server import resolve_config

    path = tmp_path / "r.yaml"
    path.write_text(
        "name: civil\nregistry: {alias: production}\n"
        "serve: {engine: transformers, port: 9001, domains: {civil: {keywords: [민원]}}}\n",
        encoding="utf-8",
    )
    keywords = tmp_path / "kw.txt"
    keywords.write_text("세금\n", encoding="utf-8")
    cfg = resolve_config(load_recipe(path), [], {"port": 9100, "engine": None}, {"tax": keywords})
    domains = cfg.domains
    assert cfg.models == ["civil@production"] and cfg.engine == "transformers" and cfg.port == 9100
    assert domains["civil"].keywords == ["민원"] and domains["tax"].keywords == ["세금"]


def test_domain_guard_by_embedding_similarity(served_home):
    from kollm.engines.transformers_engine import TransformersEngine
    from kollm.registry import Registry
    from kollm.serve.service import DomainGuard

    engine = TransformersEngine(Registry(served_home).get("tiny@production").artifact_path)
    engine.load()
    examples = ["#Person1#: 치과 예약을 하고 싶어요.", "#Person1#: 병원 진료 예약이 가능한가요?"]
    guard = DomainGuard(examples=examples, min_similarity=0.0)
    guard.prepare(engine)
    assert guard.allows(examples[0], engine)  # an example is close to its own centroid
    strict = DomainGuard(examples=examples, min_similarity=1.01)
    strict.prepare(engine)
    assert not strict.allows(examples[0], engine)
    assert DomainGuard().allows("아무 말")


@pytest.mark.usefixtures("served_store")  # aliases resolved on both stores
def test_two_versions_of_one_model_side_by_side(start_server, served_home, tmp_path):
    import shutil

    registry = Registry(served_home)
    v1 = registry.get("tiny@production")
    shutil.copytree(v1.artifact_path, tmp_path / "v")
    v2 = registry.register("tiny", tmp_path / "v", recipe_text=v1.recipe_text)
    server = start_server(refs=["tiny@production", v2.ref])
    api = openai.OpenAI(base_url=server.base_url + "/v1", api_key="x", max_retries=0)
    listed = api.models.list().data
    assert {m.id for m in listed if not m.model_extra.get("task")} == {"tiny", v2.ref}
    messages = [{"role": "user", "content": "안녕"}]
    for model, version in (("tiny", v1.ref), (v2.ref, v2.ref), (v1.ref, v1.ref)):
        reply = api.chat.completions.create(model=model, messages=messages, max_tokens=2)
        assert reply.model_extra["model_version"] == version


def test_kollm_serve_exits_2_when_a_model_cannot_be_loaded(served_home, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    home = tmp_path / "home"  # its own store: the weights are tampered with below
    source = Registry(served_home).get("tiny:1").artifact_path
    Registry(home).promote("tiny", Registry(home).register("tiny", source).version)
    env = {**os.environ, "KOLLM_HOME": str(home)}
    kollm = [str(Path(sys.executable).parent / "kollm"), "serve", "--port", "0"]

    unknown = subprocess.run([*kollm, "tiny@nosuch"], env=env, capture_output=True, text=True)
    assert unknown.returncode == 2 and "tiny has no alias 'nosuch'" in unknown.stderr

    missing = subprocess.run([*kollm, "./no/such/dir"], env=env, capture_output=True, text=True)
    assert missing.returncode == 2 and "no such model dir" in missing.stderr

    weights = Path(Registry(home).get("tiny:1").artifact_path) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    broken = subprocess.run(
        [*kollm, "tiny:1"], env=env, capture_output=True, text=True, timeout=120
    )
    assert broken.returncode == 2
    assert "cannot serve" in broken.stderr and "model.safetensors changed" in broken.stderr
