import json

import pytest
from typer.testing import CliRunner

from kollm.cli import app
from kollm.cluster.planner import ModelShape, kv_budget, max_context, plan

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
    # NF4 linear layers; embeddings and lm_head upcast to fp32 by prepare_model_for_kbit_training
    assert qlora.weights_gib < lora.weights_gib / 2
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


LLAMA3_70B_NUMBERS = ["--layers", "80", "--hidden-size", "8192", "--heads", "64"]
LLAMA3_70B_NUMBERS += ["--kv-heads", "8", "--vocab-size", "128256", "--intermediate-size", "28672"]


def test_explicit_numbers_and_an_inventory_say_how_many_cards_each_node_needs():
    repo = __import__("pathlib").Path(__file__).resolve().parents[2]
    inventory = str(repo / "examples" / "inventory.yaml")
    result = CliRunner().invoke(
        app, ["plan", *LLAMA3_70B_NUMBERS, "--inventory", inventory, "--json"]
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["parameters_b"] == pytest.approx(70.6, rel=0.01)  # Llama-3-70B's published size
    assert out["fits"] == []  # no single card holds 131 GiB of weights
    rows = {(r["node"], r["card"]): r for r in out["inventory"]}
    assert rows["gpu-01", "A100-80GB"]["needed"] == 2 and rows["gpu-01", "A100-80GB"]["holds"]
    assert not rows["gpu-02", "L4"]["holds"]


def test_a_config_missing_a_field_is_named_and_other_families_names_are_read(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 64}))
    result = CliRunner().invoke(app, ["plan", str(tmp_path)])
    assert result.exit_code == 2
    assert "lacks vocab_size, num_hidden_layers, num_attention_heads" in result.output
    # the numbers on the command line complete the config
    filled = CliRunner().invoke(
        app,
        ["plan", str(tmp_path), "--layers", "2", "--heads", "4", "--vocab-size", "300", "--json"],
    )
    assert filled.exit_code == 0, filled.output
    gpt2 = {"n_embd": 768, "n_layer": 12, "n_head": 12, "vocab_size": 50257}
    shape = ModelShape.from_config(gpt2)
    assert (shape.hidden, shape.layers, shape.heads, shape.kv_heads) == (768, 12, 12, 12)
    nested = ModelShape.from_config({"architectures": ["X"], "text_config": LLAMA3_8B})
    assert nested.parameters == 8_030_261_248


# Unsloth's context-length benchmark (unsloth.ai/blog/llama3-1 and the Unsloth docs'
# "Context length benchmarks" table): Llama-3.1-8B, QLoRA rank 32 on all linear layers, batch 1;
# Hugging Face + FlashAttention-2, with gradient checkpointing, fits 2,551 tokens in 16 GB and
# 5,789 in 24 GB. Cards are taken at their nominal GiB.
UNSLOTH_HF_FA2 = {16: 2551, 24: 5789}


@pytest.mark.parametrize(("card_gib", "published"), sorted(UNSLOTH_HF_FA2.items()))
def test_qlora_longest_context_matches_the_published_benchmark(card_gib, published):
    shape = ModelShape.from_config(LLAMA3_8B)
    longest = max_context(shape, "qlora", card_gib, lora_rank=32, attention="flash")
    assert longest == pytest.approx(published, rel=0.15)


def test_checkpointing_and_the_attention_kernel_change_the_activations():
    shape = ModelShape.from_config(LLAMA3_8B)
    ckpt = plan(shape, "qlora", "nf4", 4096)
    stored = plan(shape, "qlora", "nf4", 4096, checkpointing=False)
    eager = plan(shape, "qlora", "nf4", 4096, checkpointing=False, attention="eager")
    assert ckpt.activation_gib < stored.activation_gib < eager.activation_gib
    # eager keeps heads x seq^2 scores in bf16 and fp32 in every layer: 32 x 32 x 4096^2 x 6 B
    assert eager.activation_gib - stored.activation_gib == pytest.approx(96.0, rel=0.01)
    assert "gradient checkpointing, sdpa attention, batch 1" in ckpt.assumes
    assert "no gradient checkpointing" in stored.assumes
    # the example: at 2,048 tokens QLoRA of an 8B model fits a 24 GB card
    example = plan(shape, "qlora", "nf4", 2048)
    assert example.total_gib < 16 and "RTX4090" in example.fits and example.kv_cache_gib is None


def test_plan_command_shows_what_it_assumes_and_the_longest_sequence(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA3_8B))
    args = ["plan", str(tmp_path), "--task", "qlora", "--precision", "nf4", "--gpu", "RTX4090"]
    shown = CliRunner().invoke(app, [*args, "--context", "2048"])
    assert shown.exit_code == 0, shown.output
    assert "assumes: gradient checkpointing, sdpa attention" in shown.output
    assert "the longest sequence that trains is" in shown.output
    out = json.loads(CliRunner().invoke(app, [*args, "--no-checkpointing", "--json"]).output)
    with_ckpt = json.loads(CliRunner().invoke(app, [*args, "--json"]).output)
    assert out["max_context"] < with_ckpt["max_context"]
    bad = CliRunner().invoke(app, [*args, "--attention", "magic"])
    assert bad.exit_code == 2 and "--attention" in bad.output


# A second source, for full fine-tuning: Korthikanti et al. 2022, "Reducing Activation
# Recomputation in Large Transformer Models", eq. (1): a GPT layer keeps s*b*h*(34 + 5*a*s/h)
# bytes of fp16 activations, of which 5*a*s^2*b are the attention scores (gone with a fused
# kernel); and Rajbhandari et al. 2020 (ZeRO), section 3.1: mixed-precision Adam needs 16 bytes
# of model states per parameter, "at least 24 GB" for the 1.5B-parameter GPT-2.
GPT3_175B = {
    "model_type": "gpt2",
    "vocab_size": 51200,
    "hidden_size": 12288,
    "num_hidden_layers": 96,
    "num_attention_heads": 96,
    "intermediate_size": 4 * 12288,
}


def test_full_training_activations_match_the_megatron_formula():
    from kollm.cluster.planner import GIB, LOGIT_BYTES, activation_gib

    shape = ModelShape.from_config(GPT3_175B)
    s, b, h, layers = 2048, 1, 12288, 96
    logits = s * b * shape.vocab * LOGIT_BYTES / GIB
    stored = activation_gib(shape, s * b, "full", checkpointing=False, attention="flash") - logits
    assert stored == pytest.approx(layers * s * b * h * 34 / GIB, rel=0.01)
    eager = activation_gib(shape, s * b, "full", checkpointing=False, attention="eager") - logits
    published = layers * s * b * h * (34 + 5 * 96 * s / h) / GIB
    assert eager == pytest.approx(published, rel=0.15)  # HF's eager softmax is fp32: 6, not 5


def test_full_training_model_states_match_zero():
    gpt2_xl = {
        **GPT3_175B,
        "hidden_size": 1600,
        "num_hidden_layers": 48,
        "num_attention_heads": 25,
        "tie_word_embeddings": True,
        "intermediate_size": 6400,
        "vocab_size": 50257,
    }
    shape = ModelShape.from_config(gpt2_xl)
    assert shape.parameters == pytest.approx(1.56e9, rel=0.01)  # GPT-2 XL: 1.5B
    full = plan(shape, "full", "bf16", 1024)
    states_gb = (full.weights_gib + full.training_gib) * 2**30 / 1e9
    assert states_gb == pytest.approx(24 * shape.parameters / 1.5e9, rel=0.01)


def test_a_ray_train_run_is_placed_worker_by_worker_on_the_inventorys_nodes():
    repo = __import__("pathlib").Path(__file__).resolve().parents[2]
    inventory = str(repo / "examples" / "inventory.yaml")
    llama3_8b = ["--layers", "32", "--hidden-size", "4096", "--heads", "32", "--kv-heads", "8"]
    llama3_8b += ["--vocab-size", "128256", "--intermediate-size", "14336"]
    base = ["plan", *llama3_8b, "--task", "lora", "--context", "2048", "--inventory", inventory]
    result = CliRunner().invoke(app, [*base, "--workers", "7"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    # 21.3 GiB a card: gpu-01's four A100s, then gpu-02's two L4s and its RTX6000-Ada
    assert "ray train: 7 workers x 1 GPU(s), 21.33 GiB a card" in result.output
    assert "gpu-01: 4 workers on 4 A100-80GB" in result.output
    assert "gpu-02: 3 workers on 3 L4/RTX6000-Ada" in result.output
    two_each = CliRunner().invoke(
        app, [*base, "--workers", "3", "--gpus-per-worker", "2", "--json"]
    )
    spread = json.loads(two_each.output)["ray_train"]
    assert [(r["node"], r["workers"], r["gpus"]) for r in spread["nodes"]] == [
        ("gpu-01", 2, 4),
        ("gpu-02", 1, 2),
    ]
    too_many = CliRunner().invoke(app, [*base, "--workers", "8"], env={"COLUMNS": "200"})
    assert "8 Ray workers of 1 GPUs of at least 21.3 GiB each: the inventory holds 7" in (
        too_many.output
    )
