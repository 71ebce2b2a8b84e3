"""`kollm export` measures what a conversion costs against the registered weights and stores
the figures with the export (`kollm registry show` lists them); `--compare` writes one table
of precisions (size, load time, tokens/s, perplexity ratio, agreement) as JSON and HTML."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from kollm.cli import app
from kollm.registry import Registry


def test_an_export_is_measured_and_registry_show_lists_its_figures(
    qwen2_chat_base, tmp_path, monkeypatch
):
    monkeypatch.setenv("KOLLM_HOME", str(tmp_path / "home"))
    Registry().register("chat", qwen2_chat_base, base_model="scratch")
    runner = CliRunner()
    done = runner.invoke(app, ["export", "chat:1", "-o", str(tmp_path / "out"), "-f", "ct2"])
    assert done.exit_code == 0, done.output
    assert "quality against chat:1: ppl_ratio" in done.output
    shown = runner.invoke(app, ["registry", "show", "chat:1"])
    (export,) = json.loads(shown.output)["exports"]
    quality = export["detail"]["quality"]
    assert export["quant"] == "int8" and 0.95 < quality["ppl_ratio"] <= 1.05
    assert quality["long"]["ppl_ratio"] <= 1.05 and quality["sample"].startswith("kollm.samples")


def test_compare_writes_one_table_of_precisions(qwen2_chat_base, tmp_path, monkeypatch):
    monkeypatch.setenv("KOLLM_HOME", str(tmp_path / "home"))
    Registry().register("chat", qwen2_chat_base, base_model="scratch")
    out = tmp_path / "cmp"
    done = CliRunner().invoke(
        app, ["export", "chat:1", "-o", str(out), "--compare", "int8,float16,q4_nope"]
    )
    assert done.exit_code == 0, done.output
    report = json.loads((out / "compare.json").read_text())
    reference, int8, float16, bad = report["rows"]
    assert reference["kind"].startswith("reference") and reference["tokens_per_s"] > 0
    for row in (int8, float16):
        assert row["size_mb"] > 0 and row["load_s"] >= 0 and row["tokens_per_s"] > 0
        assert 0.95 < row["ppl_ratio"] <= 1.05 and 0 <= row["token_agreement"] <= 1
    assert float16["size_mb"] > int8["size_mb"]  # int8 is the smaller file
    assert "q4_nope" in bad["error"]  # a precision that cannot be made says why, in its row
    html = (out / "compare.html").read_text()
    assert "<table" in html and "ppl ratio" in html and "float16" in html
    assert "| int8 |" in done.output
    exports = Registry().exports("chat:1")
    assert {e["quant"] for e in exports if "quality" in e["detail"]} == {"int8", "float16"}


def test_a_version_is_measured_on_its_own_dev_split(qwen2_chat_base, tmp_path):
    from kollm.cluster.export import export_model
    from kollm.prompts import PromptFormat
    from kollm.samples.chats import generate_chats

    dev = tmp_path / "prepared" / "dev.jsonl"
    dev.parent.mkdir()
    dev.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in generate_chats(12, 3)))
    recipe = "name: chat\noutput_dir: runs/{name}\n# override: data.output_dir=" + str(dev.parent)
    registry = Registry(tmp_path / "home")
    fmt = PromptFormat("chat", "chat_template").to_json()
    registry.register("chat", qwen2_chat_base, recipe_text=recipe, prompt_format=fmt)
    result = export_model("chat:1", "ct2", tmp_path / "out", registry=registry, measure=True)
    assert result.quality["sample"] == f"dev split {dev}"
    assert 0.95 < result.quality["ppl_ratio"] <= 1.05 and result.quality["samples"] == 4
    assert registry.exports("chat:1")[-1]["detail"]["quality"] == result.quality
