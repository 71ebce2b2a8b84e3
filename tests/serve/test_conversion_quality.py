"""What a conversion costs is measured against the weights it came from, and a conversion that
loses too much is not served: a damaged CTranslate2 conversion is caught and refused by name,
while a sound int8 conversion passes and its figures are stored with the version's export."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kollm.cluster.quality import conversion_measurer
from kollm.engines.ctranslate2_engine import CTranslate2Engine
from kollm.engines.quality import (
    QualityLimit,
    conversation_sample,
    measure_conversion,
    quality_loss,
)
from kollm.engines.transformers_engine import TransformersEngine
from kollm.registry import Registry
from kollm.samples.chats import generate_chats
from kollm.serve.metrics import ServerMetrics
from kollm.serve.service import ConversionRefused, ModelManager

LIMIT = QualityLimit(1.05)


def conversations():
    return [conversation_sample(c["messages"]) for c in generate_chats(10, seed=0)]


def damaged_conversion(model_dir: Path, out: Path) -> Path:
    """An int8 conversion of `model_dir` whose final norm was scaled 30 times (as a broken
    converter or a bad quantisation scale would): its predictions no longer the model's."""
    import ctranslate2
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    with torch.no_grad():
        model.model.norm.weight.mul_(30.0)
    shutil.copytree(model_dir, out / "hf", ignore=shutil.ignore_patterns("*.safetensors"))
    model.save_pretrained(str(out / "hf"))
    converter = ctranslate2.converters.TransformersConverter(str(out / "hf"))
    return Path(converter.convert(str(out / "ct2"), quantization="int8", force=True))


@pytest.fixture(scope="module")
def reference(qwen2_chat_base):
    engine = TransformersEngine(qwen2_chat_base, device="cpu")
    engine.load()
    return engine


def test_a_sound_int8_conversion_is_within_the_limit(reference, qwen2_chat_base):
    converted = CTranslate2Engine(qwen2_chat_base)
    converted.load()
    figures = measure_conversion(reference, converted, conversations())
    assert 0.95 < figures["ppl_ratio"] <= 1.05 and 0.95 < figures["long"]["ppl_ratio"] <= 1.05
    assert figures["token_agreement"] > 0.8 and figures["long"]["tokens"] > figures["tokens"] / 4
    assert 0 <= figures["answer_agreement"] <= 1
    assert quality_loss(figures, LIMIT) is None


def test_a_damaged_conversion_is_caught(reference, qwen2_chat_base, tmp_path):
    damaged = damaged_conversion(qwen2_chat_base, tmp_path)
    converted = CTranslate2Engine(qwen2_chat_base, conversion_dir=damaged)
    converted.load()
    figures = measure_conversion(reference, converted, conversations())
    assert figures["ppl_ratio"] > 1.5
    assert "perplexity ratio" in quality_loss(figures, LIMIT)
    assert quality_loss(figures, QualityLimit(float("inf"))) is None


def manager(registry: Registry, limit: QualityLimit | None = LIMIT) -> ModelManager:
    return ModelManager(
        ["chat:1"],
        "ctranslate2",
        ServerMetrics(),
        registry,
        quality_limit=limit,
        measure=conversion_measurer(registry),
    )


def test_the_server_measures_its_conversion_and_refuses_a_damaged_one(qwen2_chat_base, tmp_path):
    registry = Registry(tmp_path / "home")
    registry.register("chat", qwen2_chat_base, base_model="scratch")
    served = manager(registry).load("chat:1")  # a sound conversion: measured, stored, served
    (row,) = registry.exports("chat:1")
    assert row["detail"]["quality"]["ppl_ratio"] <= 1.05
    assert row["detail"]["quality"]["long"]["ppl_ratio"] <= 1.05
    # The cached conversion is replaced by a damaged one, recorded as the version's own.
    conversion = served.engine.conversion
    shutil.rmtree(conversion)
    shutil.copytree(damaged_conversion(Path(served.model_dir), tmp_path), conversion)
    from kollm.engines.ctranslate2_engine import conversion_sha256

    sha = conversion_sha256(conversion)
    registry.add_export("chat:1", "ct2", conversion, sha, 1, quant="int8", cache=True)
    with pytest.raises(ConversionRefused) as refused:
        manager(registry).load("chat:1")
    message = str(refused.value)
    assert str(conversion) in message and "perplexity ratio" in message
    assert "serve.max_quality_loss 1.05" in message and "--allow-quality-loss" in message
    assert registry.export_quality("chat:1", sha)["ppl_ratio"] > 1.5
    # Allowed past the limit, it serves (figures already stored: not measured again).
    assert manager(registry, QualityLimit(float("inf"))).load("chat:1").engine.conversion
