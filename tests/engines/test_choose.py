"""`serve.engine: auto`: llama.cpp's llama-server where it is found and can serve every model,
CTranslate2 otherwise, each time with the reason `kollm serve` prints on its first line."""

from __future__ import annotations

import json
import stat

import pytest

from kollm.config import ServeConfig
from kollm.engines import choose_engine
from kollm.engines import llamacpp_engine as lc
from kollm.serve.server import engine_choice


@pytest.fixture
def llama_server(tmp_path, monkeypatch):
    binary = tmp_path / "bin" / "llama-server"
    binary.parent.mkdir()
    binary.write_text("#!/bin/sh\n")
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("KOLLM_LLAMA_SERVER", str(binary))
    return binary


@pytest.fixture
def no_llama_server(monkeypatch):
    def missing(explicit=None):
        raise lc.LlamaServerMissing("none")

    monkeypatch.setattr(lc, "find_llama_server", missing)


def _model(path, **config):
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "qwen2", **config}))
    return path


def test_a_named_engine_is_kept(llama_server):
    assert choose_engine("transformers", []) == ("transformers", "as asked")


def test_auto_takes_llamacpp_where_llama_server_is_found(llama_server, tmp_path):
    engine, why = choose_engine("auto", [_model(tmp_path / "m")])
    assert engine == "llamacpp"
    assert str(llama_server) in why


def test_auto_takes_ctranslate2_without_llama_server(no_llama_server, tmp_path):
    engine, why = choose_engine("auto", [_model(tmp_path / "m")])
    assert engine == "ctranslate2"
    assert "make llama-server" in why


def test_auto_keeps_ctranslate2_for_a_seq2seq_model(llama_server, tmp_path):
    bart = _model(tmp_path / "kobart", model_type="bart", is_encoder_decoder=True)
    engine, why = choose_engine("auto", [_model(tmp_path / "m"), bart])
    assert engine == "ctranslate2"
    assert "kobart is encoder-decoder" in why


def test_auto_keeps_ctranslate2_when_log_probabilities_are_needed(llama_server, tmp_path):
    engine, why = choose_engine("auto", [_model(tmp_path / "m")], needs=("scoring",))
    assert engine == "ctranslate2"
    assert "log-probabilities" in why


def test_the_config_default_is_auto_and_resolves_from_model_dirs(llama_server, tmp_path):
    bart = _model(tmp_path / "kobart", is_encoder_decoder=True)
    cfg, why = engine_choice(ServeConfig(models=[str(bart)]))
    assert ServeConfig().engine == "auto"
    assert cfg.engine == "ctranslate2" and "encoder-decoder" in why
    cfg, _ = engine_choice(ServeConfig(models=[str(_model(tmp_path / "m"))]))
    assert cfg.engine == "llamacpp"
