import json

import pytest
from typer.testing import CliRunner

from kollm.cli import app
from kollm.orchestrate.planner import ModelShape, kv_budget, plan

LLAMA3_8B = {
    "vocab_size": 128256,
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "intermediate_size": 14336,
    "tie_word_embeddings": False,
}


def test_llama3_8b_on_an_a100_40gb_matches_vllms_start_up_log():
    # vLLM's log: total 39.38 GiB x 0.9; weights 14.99 GiB; activation peak + non-torch 9.33 GiB;
    # "the rest of the memory reserved for KV Cache is 11.12GiB"; 5,691 blocks; ~11x at 8,192.
    shape = ModelShape.from_config(LLAMA3_8B)
    assert shape.parameters == 8_030_261_248
    result = kv_budget(plan(shape, "inference", "bf16", 8192, activation=9.33), 39.38, 0.9, 8192)
    assert result.weights_gib == pytest.approx(14.99, rel=0.02)
    assert result.kv_bytes_per_token == 2 * 32 * 8 * 128 * 2
    assert result.kv_cache_gib == pytest.approx(11.12, rel=0.02)
    assert result.kv_blocks == pytest.approx(5691, rel=0.02)
    assert result.max_concurrency == pytest.approx(11.1, rel=0.02)


def test_training_needs_more_than_the_rule_of_thumb():
    shape = ModelShape.from_config(LLAMA3_8B)
    full = plan(shape, "full", "bf16", 2048)
    lora = plan(shape, "lora", "bf16", 2048)
    qlora = plan(shape, "qlora", "nf4", 2048)
    assert full.total_gib > 8 * full.rule_of_thumb_gib / 2  # ~16 bytes per parameter
    assert qlora.weights_gib < lora.weights_gib / 2.5
    assert qlora.total_gib < lora.total_gib < full.total_gib
    assert "H100-80GB" not in full.fits and "A100-80GB" in lora.fits


def test_plan_command_reads_a_config_and_prints_json(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA3_8B))
    result = CliRunner().invoke(
        app, ["plan", str(tmp_path), "--gpu", "A100-40GB", "--activation-gib", "9.33", "--json"]
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert set(out) >= {
        "weights_gib",
        "kv_bytes_per_token",
        "kv_cache_gib",
        "max_concurrency",
        "fits",
    }
    assert out["max_concurrency"] == pytest.approx(11.1, rel=0.02)
    bad = CliRunner().invoke(app, ["plan", str(tmp_path), "--gpu", "Voodoo5"])
    assert bad.exit_code == 2 and "unknown card" in bad.output
