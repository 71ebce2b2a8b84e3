"""`kollm export`: GGUF through llama.cpp's own converter, read back with the `gguf` reader
(metadata, tokenizer, every tensor against the HF weight), the Ollama Modelfile's template run
by Go's text/template against the tokenizer's chat template, the CTranslate2 dir, and each
export recorded in the version's lineage."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

from kollm.cluster import llamacpp
from kollm.cluster.export import ExportError, export_model

pytestmark = pytest.mark.skipif(
    not (llamacpp.converter_dir() / "convert_hf_to_gguf.py").is_file(),
    reason="llama.cpp's converter is not fetched (python -m kollm.cluster.llamacpp fetch)",
)


def _fields(reader) -> dict:
    out = {}
    for name, f in reader.fields.items():
        out[name] = f.contents() if hasattr(f, "contents") else f
    return out


def _permute(w, n_head):
    """llama.cpp stores a Llama q/k projection with its rotary halves interleaved."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _hf_weights(model_dir):
    from safetensors.numpy import load_file

    return load_file(str(model_dir / "model.safetensors"))


GGUF_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "model.layers.0.input_layernorm.weight": "blk.0.attn_norm.weight",
    "model.layers.0.post_attention_layernorm.weight": "blk.0.ffn_norm.weight",
    "model.layers.0.self_attn.q_proj.weight": "blk.0.attn_q.weight",
    "model.layers.0.self_attn.k_proj.weight": "blk.0.attn_k.weight",
    "model.layers.0.self_attn.v_proj.weight": "blk.0.attn_v.weight",
    "model.layers.0.self_attn.o_proj.weight": "blk.0.attn_output.weight",
    "model.layers.0.mlp.gate_proj.weight": "blk.0.ffn_gate.weight",
    "model.layers.0.mlp.up_proj.weight": "blk.0.ffn_up.weight",
    "model.layers.0.mlp.down_proj.weight": "blk.0.ffn_down.weight",
}


@pytest.mark.parametrize("quant", ["f16", "q8_0"])
def test_gguf_holds_the_model_and_its_tokenizer(local_base, tmp_path, quant):
    import gguf
    from transformers import AutoTokenizer

    result = export_model(str(local_base), "gguf", tmp_path / "out", quant)
    reader = gguf.GGUFReader(str(result.path))
    meta = _fields(reader)
    config = json.loads((local_base / "config.json").read_text())
    tok = AutoTokenizer.from_pretrained(str(local_base))
    assert meta["general.architecture"] == "llama"
    assert meta["llama.context_length"] == config["max_position_embeddings"]
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    assert meta["tokenizer.ggml.tokens"] == tok.convert_ids_to_tokens(list(range(len(tok))))
    merges = json.loads((local_base / "tokenizer.json").read_text())["model"]["merges"]
    assert [m.split(" ") for m in meta["tokenizer.ggml.merges"]] == [
        m if isinstance(m, list) else m.split(" ") for m in merges
    ]
    assert meta["tokenizer.chat_template"] == tok.chat_template
    assert meta["tokenizer.ggml.eos_token_id"] == tok.eos_token_id
    hf = _hf_weights(local_base)
    tensors = {t.name: t for t in reader.tensors}
    for hf_name, name in GGUF_NAMES.items():
        w = hf[hf_name].astype(np.float32)
        if name.endswith(("attn_q.weight", "attn_k.weight")):
            w = _permute(w, config["num_attention_heads"])
        t = tensors[name]
        got = gguf.quants.dequantize(t.data, t.tensor_type).reshape(w.shape)
        if t.tensor_type == gguf.GGMLQuantizationType.Q8_0:
            blocks = np.abs(w.reshape(-1, 32)).max(axis=1, keepdims=True)
            # half a step of the block's scale, plus the scale's own float16 rounding (2^-11
            # relative, times up to 127 steps)
            bound = blocks / 127 * (0.5 + 127 * 2**-11) + 1e-7
            assert (np.abs(got - w).reshape(-1, 32) <= bound).all(), name
        elif t.tensor_type == gguf.GGMLQuantizationType.F16:
            assert np.array_equal(got, w.astype(np.float16).astype(np.float32)), name
        else:
            assert np.array_equal(got, w), name
    assert quant == "f16" or any(
        t.tensor_type == gguf.GGMLQuantizationType.Q8_0 for t in reader.tensors
    )


GO_RENDER = """package main

import (
\t"encoding/json"
\t"os"
\t"text/template"
)

type Message struct {
\tRole    string `json:"role"`
\tContent string `json:"content"`
}

func main() {
\tvar in struct {
\t\tTemplate string    `json:"template"`
\t\tMessages []Message `json:"messages"`
\t}
\tif err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
\t\tpanic(err)
\t}
\tt := template.Must(template.New("m").Parse(in.Template))
\tif err := t.Execute(os.Stdout, map[string]any{"Messages": in.Messages}); err != nil {
\t\tpanic(err)
\t}
}
"""


def _go_render(tmp_path, template: str, messages: list[dict]) -> str:
    """Ollama's template engine is Go's text/template over `.Messages` (with the Modelfile's
    SYSTEM put first when the request has none): run the real one."""
    program = tmp_path / "render.go"
    program.write_text(GO_RENDER)
    env = {"HOME": str(tmp_path), "GOCACHE": str(tmp_path / "gocache"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        ["go", "run", str(program)],
        input=json.dumps({"template": template, "messages": messages}),
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _modelfile(path):
    text = path.read_text()
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    system = text.split('SYSTEM """', 1)[1].split('"""', 1)[0] if 'SYSTEM """' in text else None
    stops = [json.loads(x.split(" ", 2)[2]) for x in text.splitlines() if " stop " in x]
    return text, template, system, stops


@pytest.mark.skipif(
    shutil.which("go") is None, reason="no Go toolchain (apt-get install golang-go)"
)
@pytest.mark.parametrize("fixture", ["local_base", "qwen2_chat_base"])
def test_the_modelfile_template_renders_as_the_chat_template(fixture, request, tmp_path):
    from transformers import AutoTokenizer

    base = request.getfixturevalue(fixture)
    result = export_model(str(base), "gguf", tmp_path / "out", "f16")
    (modelfile,) = result.files
    text, template, system, stops = _modelfile(modelfile)
    assert text.startswith(f"FROM ./{result.path.name}\n")
    tok = AutoTokenizer.from_pretrained(str(base))
    chats = [
        [
            {"role": "user", "content": "전입신고는 어디서 하나요?"},
            {"role": "assistant", "content": "주민센터에서 합니다."},
            {"role": "user", "content": "온라인으로도 되나요?"},
        ],
        [
            {"role": "system", "content": "민원 안내 도우미입니다."},
            {"role": "user", "content": "여권 발급 기간은?"},
            {"role": "assistant", "content": "보통 4일입니다."},
            {"role": "user", "content": "급하면요?"},
        ],
    ]
    for chat in chats:
        expected = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        sent = (
            chat
            if chat[0]["role"] == "system" or system is None
            else [{"role": "system", "content": system}, *chat]
        )
        assert _go_render(tmp_path, template, sent) == expected
    assert tok.eos_token in stops and "<|im_end|>" in stops
    assert "PARAMETER num_ctx " in text
    if fixture == "qwen2_chat_base":
        assert system == "You are a helpful assistant."


def test_an_unknown_pre_tokenizer_names_the_fix(local_base, tmp_path):
    """A tokenizer whose split kollm cannot tell (here: a Metaspace-style prefix space added
    before byte-level BPE) and whose hash llama.cpp has never seen."""
    spec = json.loads((local_base / "tokenizer.json").read_text())
    spec["pre_tokenizer"]["add_prefix_space"] = True
    (local_base / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(ExportError, match=r"--pre-tokenizer llama-bpe \| qwen2 \| gpt-2"):
        export_model(str(local_base), "gguf", tmp_path / "out", "f16")
    assert not list((tmp_path / "out").glob("*.gguf"))  # nothing half-written
    named = export_model(str(local_base), "gguf", tmp_path / "out", "f16", pre_tokenizer="gpt-2")
    assert named.path.is_file()


def test_a_seq2seq_model_gets_a_clear_refusal(kobart_base, tmp_path):
    with pytest.raises(ExportError, match=r"cannot convert this model.*Bart"):
        export_model(str(kobart_base), "gguf", tmp_path / "out", "f16")


def test_q4_without_llama_quantize_says_what_is_needed(local_base, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr("kollm.engines.llamacpp_engine.built_places", lambda: [])
    with pytest.raises(ExportError, match="llama-quantize on PATH"):
        export_model(str(local_base), "gguf", tmp_path / "out", "q4_k_m")


def test_exports_of_a_version_are_in_its_lineage(local_base, tmp_path):
    import ctranslate2
    from typer.testing import CliRunner

    from kollm.cli import app
    from kollm.registry import Registry

    registry = Registry()
    version = registry.register("tiny", local_base, base_model="scratch", method="sft")
    runner = CliRunner()
    for args in (["--format", "gguf", "--quant", "q8_0"], ["--format", "ct2"], []):
        done = runner.invoke(app, ["export", version.ref, "-o", str(tmp_path / "out"), *args])
        assert done.exit_code == 0, done.output
    shown = json.loads(runner.invoke(app, ["registry", "show", "tiny:1"]).output)
    exports = {e["format"]: e for e in shown["exports"]}
    assert set(exports) == {"gguf", "ct2", "hf"}
    gguf_file = tmp_path / "out" / "tiny-1-q8_0.gguf"
    from kollm.artifacts import file_sha256

    assert exports["gguf"]["sha256"] == file_sha256(gguf_file)
    assert exports["gguf"]["quant"] == "q8_0" and exports["gguf"]["size_bytes"] > 0
    ct2_dir = tmp_path / "out" / "ct2-int8"
    assert (ct2_dir / "tokenizer.json").is_file()
    generator = ctranslate2.Generator(str(ct2_dir))
    (out,) = generator.generate_batch([["<|im_start|>"]], max_length=3)
    assert len(out.sequences[0]) >= 1
    assert (tmp_path / "out" / "hf" / "model.safetensors").is_file()
    bad = runner.invoke(app, ["export", "tiny:1", "-o", str(tmp_path / "o"), "--format", "onnx"])
    assert bad.exit_code != 0 and "--format 'onnx'" in bad.output
