"""An adapter version records the base it was trained on (its name, where it was, its
revision, its registry reference, the sha256 of its weights), and checkout refuses it by name
when the base on disk is no longer those weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kollm.artifacts import weights_sha256
from kollm.registry import Registry, RegistryError


def fake_model(path: Path, weights: bytes) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.safetensors").write_bytes(weights)
    (path / "config.json").write_text("{}")
    return path


def fake_adapter(path: Path, base: str, revision: str | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    config = {"peft_type": "LORA", "base_model_name_or_path": base, "revision": revision}
    (path / "adapter_config.json").write_text(json.dumps(config))
    (path / "adapter_model.safetensors").write_bytes(b"lora-" + base.encode())
    return path


def test_an_adapter_records_its_local_base_and_is_refused_when_the_base_changes(tmp_path):
    base = fake_model(tmp_path / "base", b"base-v1")
    reg = Registry(tmp_path / "home")
    version = reg.register("ko-lora", fake_adapter(tmp_path / "a", str(base)), base_model=str(base))
    recorded = version.lineage["base"]
    assert recorded == {
        "name_or_path": str(base),
        "path": str(base.resolve()),
        "revision": None,
        "weights_sha256": weights_sha256(base),
    }
    assert reg.checkout("ko-lora:1").ref == "ko-lora:1"  # the base is as it was
    expected = weights_sha256(base)
    (base / "model.safetensors").write_bytes(b"base-v2")  # retrained, or replaced in place
    with pytest.raises(RegistryError) as err:
        reg.checkout("ko-lora:1")
    message = str(err.value)
    assert message.startswith("ko-lora:1: this adapter was trained on")
    assert f"{base} (weights sha256 {expected[:12]})" in message
    assert f"now has weights sha256 {weights_sha256(base)[:12]}" in message
    (base / "model.safetensors").unlink()
    with pytest.raises(RegistryError, match=f"{base.resolve()} holds no weights"):
        reg.checkout("ko-lora:1")


def test_a_hub_base_records_its_snapshot_commit_and_a_registered_base_its_reference(
    tmp_path, monkeypatch
):
    cache = tmp_path / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--org--tiny-base"
    fake_model(repo / "snapshots" / commit, b"hub-weights")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    reg = Registry(tmp_path / "home")
    hub = reg.register("hub-lora", fake_adapter(tmp_path / "h", "org/tiny-base"))
    assert hub.lineage["base"]["revision"] == commit
    assert hub.lineage["base"]["weights_sha256"] == weights_sha256(repo / "snapshots" / commit)
    # a base that is itself a registered version: its reference is kept beside its files
    base_version = reg.register("base", fake_model(tmp_path / "b", b"registered-base"))
    adapter = fake_adapter(tmp_path / "r", base_version.artifact_path)
    version = reg.register("reg-lora", adapter, base_model="base@production")
    assert "ref" not in version.lineage["base"]  # no such alias yet: only the files
    reg.promote("base", 1)
    version = reg.register("reg-lora", adapter, base_model="base@production")
    assert version.lineage["base"]["ref"] == "base:1"
    assert version.lineage["base"]["weights_sha256"] == base_version.weights_sha256
    # a hub base no longer in the cache is named as missing
    (repo / "refs" / "main").unlink()
    with pytest.raises(RegistryError, match="org/tiny-base is not on this machine"):
        reg.checkout("hub-lora:1")


def test_a_full_model_records_no_base(tmp_path):
    reg = Registry(tmp_path / "home")
    version = reg.register("full", fake_model(tmp_path / "m", b"w"), base_model="scratch")
    assert version.lineage is None
