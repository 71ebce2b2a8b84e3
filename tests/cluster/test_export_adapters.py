"""`kollm export` of adapters: a prompt-learning adapter cannot be merged, so gguf and ct2
refuse it with what to do instead and hf keeps it as the adapter it is; an adapter whose base
changed on disk is refused by name before anything is merged."""

from __future__ import annotations

import pytest

from kollm.cluster.export import ExportError, export_model
from kollm.registry import Registry, RegistryError
from tests.engines.test_adapter_kinds import prompt_tuning
from tests.registry.test_adapter_base import fake_adapter, fake_model


@pytest.mark.parametrize("fmt", ["ct2", "gguf"])
def test_a_prompt_tuning_adapter_is_refused_as_gguf_or_ct2_with_the_alternative(
    local_base, tmp_path, fmt
):
    adapter = prompt_tuning(local_base, tmp_path / "prompt")
    with pytest.raises(ExportError) as err:
        export_model(str(adapter), fmt, tmp_path / "out")
    message = str(err.value)
    assert f"cannot be merged into its base for a {fmt} export" in message
    assert "`kollm export --format hf` keeps the adapter" in message
    assert "--engine transformers" in message
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_a_prompt_tuning_adapter_exports_as_hf_unmerged_and_recorded(local_base, tmp_path):
    registry = Registry(tmp_path / "home")
    registry.register("ko-prompt", prompt_tuning(local_base, tmp_path / "prompt"))
    result = export_model("ko-prompt:1", "hf", tmp_path / "out", registry=registry)
    assert (result.path / "adapter_config.json").is_file()  # still the adapter
    assert not (result.path / "model.safetensors").exists()
    (row,) = registry.exports("ko-prompt:1")
    assert row["format"] == "hf" and row["sha256"] == result.sha256


def test_an_adapter_whose_base_changed_is_not_exported(tmp_path):
    base = fake_model(tmp_path / "base", b"base-v1")
    registry = Registry(tmp_path / "home")
    registry.register("ko-lora", fake_adapter(tmp_path / "a", str(base)))
    (base / "model.safetensors").write_bytes(b"base-v2")
    with pytest.raises(RegistryError, match="ko-lora:1: this adapter was trained on"):
        export_model("ko-lora:1", "hf", tmp_path / "out", registry=registry)
    assert registry.exports("ko-lora:1") == []
