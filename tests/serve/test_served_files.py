"""What is served is what was registered: the CTranslate2 conversion of a registered version
is recorded in its exports with its sha256 and checked on every load (a changed one is made
again, with a warning), and an adapter whose base changed on disk is refused by name."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from kollm.engines import GenerationParams
from kollm.registry import Registry
from kollm.serve.metrics import ServerMetrics
from kollm.serve.service import ModelManager

PROMPT = "#Person1#: 안녕하세요. 오늘 회의는 몇 시에 시작하나요?"


def answer(served) -> str:
    (out,) = served.engine.generate([PROMPT], GenerationParams(max_new_tokens=8))
    return out.text


def manager(registry: Registry, ref: str, engine: str = "ctranslate2") -> ModelManager:
    return ModelManager([ref], engine, ServerMetrics(), registry=registry)


def test_the_ctranslate2_conversion_is_recorded_and_a_changed_one_made_again(
    local_base, tmp_path, caplog
):
    registry = Registry(tmp_path / "home")
    registry.register("tiny", local_base, base_model="scratch")
    served = manager(registry, "tiny:1").load("tiny:1")
    (row,) = registry.exports("tiny:1")
    conversion = Path(row["path"])
    assert row["format"] == "ct2" and row["quant"] == "int8" and row["detail"]["cache"]
    assert served.engine.conversion == conversion and (conversion / "model.bin").is_file()
    assert row["sha256"] == served.engine.conversion_sha256
    first = answer(served)
    # A restart finds the recorded conversion as it was: nothing converted, nothing recorded.
    stamp = (conversion / "model.bin").stat().st_mtime_ns
    assert answer(manager(registry, "tiny:1").load("tiny:1")) == first
    assert (conversion / "model.bin").stat().st_mtime_ns == stamp
    assert len(registry.exports("tiny:1")) == 1
    # Corrupted in place (a bad disk, a tampered cache): made again, logged, recorded.
    with (conversion / "model.bin").open("r+b") as handle:
        handle.seek(-64, 2)
        handle.write(b"\0" * 64)
    with caplog.at_level(logging.WARNING):
        again = manager(registry, "tiny:1").load("tiny:1")
    assert f"{conversion}: the cached CTranslate2 conversion has sha256" in caplog.text
    assert "converting again" in caplog.text
    assert answer(again) == first
    assert (conversion / "model.bin").stat().st_mtime_ns != stamp
    # The conversion is deterministic: made again, it is the recorded one to the byte.
    assert again.engine.conversion_sha256 == row["sha256"]
    assert registry.exports("tiny:1")[-1]["sha256"] == row["sha256"]


def test_a_conversion_made_before_it_was_recorded_is_made_again_once(local_base, tmp_path, caplog):
    from kollm.engines.ctranslate2_engine import convert

    registry = Registry(tmp_path / "home")
    version = registry.register("tiny", local_base)
    convert(Path(version.artifact_path), "int8", version.weights_sha256)  # an older kollm's
    with caplog.at_level(logging.WARNING):
        manager(registry, "tiny:1").load("tiny:1")
    assert "(none recorded); converting again" in caplog.text
    assert len(registry.exports("tiny:1")) == 1


def lora_adapter(base: Path, out: Path) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(2)
    model = AutoModelForCausalLM.from_pretrained(str(base))
    config = LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(base)).save_pretrained(str(out))
    return out


@pytest.mark.parametrize("engine", ["ctranslate2", "transformers"])
def test_an_adapter_whose_base_changed_is_refused_by_name(local_base, tmp_path, engine):
    import torch
    from transformers import AutoModelForCausalLM

    registry = Registry(tmp_path / "home")
    adapter = lora_adapter(local_base, tmp_path / "lora")
    registry.register("ko-lora", adapter, base_model=str(local_base))
    assert answer(manager(registry, "ko-lora:1", engine).load("ko-lora:1"))
    trained_on = registry.get("ko-lora:1").lineage["base"]["weights_sha256"]
    model = AutoModelForCausalLM.from_pretrained(str(local_base))
    with torch.no_grad():
        model.lm_head.weight.mul_(1.5)  # the base retrained in place
    model.save_pretrained(str(local_base))
    with pytest.raises(ValueError) as err:
        manager(registry, "ko-lora:1", engine).load("ko-lora:1")
    message = str(err.value)
    assert "ko-lora:1: this adapter was trained on" in message
    assert f"{local_base} (weights sha256 {trained_on[:12]})" in message
    assert "now has weights sha256" in message and "refusing to serve" in message


def test_a_prompt_tuning_adapter_is_refused_before_any_gguf_is_made(local_base, tmp_path):
    from kollm.engines.lora import AdapterNotMergeable
    from tests.engines.test_adapter_kinds import prompt_tuning

    adapter = str(prompt_tuning(local_base, tmp_path / "prompt"))

    def prepare(*_):
        raise AssertionError("a GGUF export was started for an unmergeable adapter")

    models = ModelManager([adapter], "llamacpp", ServerMetrics(), prepare=prepare)
    with pytest.raises(AdapterNotMergeable, match="serve with --engine transformers"):
        models.load(adapter)
    served = ModelManager([adapter], "transformers", ServerMetrics()).load(adapter)
    assert answer(served)
