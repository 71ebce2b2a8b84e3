"""Remote code, opt-in and pinned: a base whose modeling files ship beside its weights (as
EXAONE 3.x's do) is refused by name without the flag, and with it trains, evaluates, serves
and exports, each loading the base's own classes."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import yaml
from pydantic import ValidationError

CONFIG_PY = """from transformers import LlamaConfig


class KollmTinyConfig(LlamaConfig):
    model_type = "kollm_tiny"
"""

MODELING_PY = """from transformers import LlamaForCausalLM

from .configuration_kollm_tiny import KollmTinyConfig


class KollmTinyForCausalLM(LlamaForCausalLM):
    config_class = KollmTinyConfig
"""


@pytest.fixture
def modules_cache(tmp_path, monkeypatch):
    """transformers copies a model's code into HF_MODULES_CACHE: here, never the user's home."""
    import transformers.dynamic_module_utils as dynamic

    cache = tmp_path / "hf-modules"
    monkeypatch.setenv("HF_MODULES_CACHE", str(cache))
    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(cache))
    return cache


@pytest.fixture
def remote_base(local_base, modules_cache) -> Path:
    """`local_base` turned into a remote-code model: its config names classes that live in
    Python files beside its weights (config.json's auto_map)."""
    (local_base / "configuration_kollm_tiny.py").write_text(CONFIG_PY, encoding="utf-8")
    (local_base / "modeling_kollm_tiny.py").write_text(MODELING_PY, encoding="utf-8")
    path = local_base / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["model_type"] = "kollm_tiny"
    config["architectures"] = ["KollmTinyForCausalLM"]
    config["auto_map"] = {
        "AutoConfig": "configuration_kollm_tiny.KollmTinyConfig",
        "AutoModelForCausalLM": "modeling_kollm_tiny.KollmTinyForCausalLM",
    }
    path.write_text(json.dumps(config), encoding="utf-8")
    return local_base


def _recipe(tiny_recipe: Path, base: Path, trust: bool, **train):
    from kollm.config import load_recipe

    text = yaml.safe_load(tiny_recipe.read_text(encoding="utf-8"))
    text["model"] = {"base": str(base), "trust_remote_code": trust}
    text["train"] = {**text["train"], "max_steps": 4, "save_steps": 4, **train}
    tiny_recipe.write_text(yaml.safe_dump(text), encoding="utf-8")
    return load_recipe(tiny_recipe)


def test_a_hub_id_with_remote_code_must_pin_a_revision(tmp_path):
    from kollm.config import ModelConfig

    with pytest.raises(ValidationError, match=r"model\.revision"):
        ModelConfig(base="LGAI-EXAONE/EXAONE-3.5-2.4B-Instruct", trust_remote_code=True)
    pinned = ModelConfig(base="LGAI-EXAONE/x", trust_remote_code=True, revision="e949c91")
    assert pinned.revision == "e949c91"
    assert ModelConfig(base=str(tmp_path), trust_remote_code=True).revision is None  # local


def test_hub_kwargs_pin_the_revision_and_local_dirs_need_none(tmp_path):
    from kollm.remote import base_kwargs

    assert base_kwargs("org/m", True, "abc") == {"trust_remote_code": True, "revision": "abc"}
    assert base_kwargs(str(tmp_path), True, "abc") == {"trust_remote_code": True}
    assert base_kwargs("org/m", False, None) == {}


def test_without_the_flag_training_is_refused_by_name(tiny_recipe, remote_base):
    from typer.testing import CliRunner

    from kollm.cli import app

    _recipe(tiny_recipe, remote_base, trust=False)
    result = CliRunner().invoke(app, ["train", str(tiny_recipe)])
    assert result.exit_code == 2, result.output
    assert "needs remote code: pass --trust-remote-code" in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_with_the_flag_it_trains_evaluates_serves_and_exports(
    tiny_recipe, remote_base, start_server, tmp_path
):
    from kollm.cluster.export import ExportError, export_model
    from kollm.eval.evaluate import evaluate_recipe
    from kollm.registry import Registry
    from kollm.remote import REMOTE_FILE
    from kollm.train import run_training

    recipe = _recipe(tiny_recipe, remote_base, trust=True, lora={"enabled": True})
    model_dir = run_training(recipe).model_dir
    assert json.loads((model_dir / REMOTE_FILE).read_text())["trust_remote_code"] is True

    result = evaluate_recipe(recipe, model_dir, tmp_path / "eval")
    assert result.metrics["examples"] > 0 and result.metrics["perplexity"] > 0

    home = tmp_path / "home"
    registry = Registry(home)
    version = registry.register("remote", model_dir, base_model=str(remote_base), method="sft")
    assert version.lineage["remote_code"]["trust_remote_code"] is True

    server = start_server(
        refs=["remote:1"],
        engine="transformers",
        registry_home=home,
        engine_options={"trust_remote_code": True},
    )
    engine = server.manager.models["remote"].engine
    assert type(engine.model.get_base_model()).__name__ == "KollmTinyForCausalLM"
    answer = httpx.post(
        server.base_url + "/v1/completions",
        json={"model": "remote", "prompt": "안녕", "max_tokens": 3},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text

    with pytest.raises(ExportError, match="needs remote code: pass --trust-remote-code"):
        export_model("remote:1", "hf", tmp_path / "out", registry=registry)
    exported = export_model(
        "remote:1", "hf", tmp_path / "out", registry=registry, trust_remote_code=True
    )
    assert (exported.path / "modeling_kollm_tiny.py").is_file()  # the merged model's own code
    assert (exported.path / REMOTE_FILE).is_file()


def test_serving_a_version_that_needs_remote_code_without_the_flag_is_refused(
    remote_base, tmp_path
):
    from kollm.registry import Registry
    from kollm.serve.metrics import ServerMetrics
    from kollm.serve.service import ModelManager

    home = tmp_path / "home"
    Registry(home).register("remote", remote_base, method="sft")
    manager = ModelManager(["remote:1"], "transformers", ServerMetrics(), Registry(home))
    with pytest.raises(
        ValueError, match=r"remote:1: .* needs remote code: pass --trust-remote-code"
    ):
        manager.check_refs()
