"""Serving a registered version on the llamacpp engine (the real llama-server): its GGUF is
exported on first use and recorded in the version's exports, found again (sha256 checked) on
the next load; the openai client streams from it; prompt log-probabilities get a 400 naming
the engines that give them; /health shows llama-server; `kollm serve --engine llamacpp`
without a llama-server exits 2 saying how to get one."""

from __future__ import annotations

import httpx
import openai
import pytest
from typer.testing import CliRunner

from kollm.cli import app
from kollm.cluster import llamacpp
from kollm.cluster.gguf_files import llamacpp_preparer
from kollm.engines.llamacpp_engine import LlamaServerMissing, find_llama_server
from kollm.registry import Registry


def _missing() -> bool:
    try:
        find_llama_server()
    except LlamaServerMissing:
        return True
    return not (llamacpp.converter_dir() / "convert_hf_to_gguf.py").is_file()


needs_server = pytest.mark.skipif(
    _missing(), reason="no llama-server or converter here: `make llama-server` builds it"
)


@needs_server
def test_a_version_is_served_from_its_gguf_export_made_once(start_server, served_home, monkeypatch):
    monkeypatch.setenv("KOLLM_HOME", str(served_home))
    registry = Registry(served_home)
    prepare = llamacpp_preparer("q8_0", registry)
    server = start_server(engine="llamacpp", prepare=prepare, max_concurrency=4)
    # made once: one q8_0 GGUF recorded (other tests of the session may export other quants)
    ggufs = [e["quant"] for e in registry.exports("tiny:1") if e["format"] == "gguf"]
    assert ggufs.count("q8_0") == 1
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="none", max_retries=0)
    chunks = list(
        client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": "주차 신청은 언제 하나요?"}],
            max_tokens=8,
            temperature=0,
            stream=True,
        )
    )
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    health = httpx.get(server.base_url + "/health").json()
    assert health["engines"]["tiny"] == {"llama_server": "up", "restarts": 0}
    with pytest.raises(openai.BadRequestError, match="transformers or ctranslate2") as err:
        client.completions.create(
            model="tiny", prompt="가나다", max_tokens=1, logprobs=1, echo=True
        )
    assert err.value.body["param"] == "logprobs"
    _sampling_reaches_llama_server(server, client)
    # a llama-server that dies is started again, and /health and the metrics say so
    served = server.manager.models["tiny"]
    served.engine.process.kill()
    served.engine.process.wait(10)
    again = client.completions.create(model="tiny", prompt="주차", max_tokens=2, temperature=0)
    assert again.choices[0].finish_reason in ("stop", "length")
    health = httpx.get(server.base_url + "/health").json()
    assert health["engines"]["tiny"] == {"llama_server": "up", "restarts": 1}
    metrics = httpx.get(server.base_url + "/metrics").text
    assert 'kollm:engine_restarts_total{model_name="tiny"} 1.0' in metrics
    # a second server finds the recorded export (sha256 checked) instead of making another
    start_server(engine="llamacpp", prepare=prepare)
    ggufs = [e["quant"] for e in registry.exports("tiny:1") if e["format"] == "gguf"]
    assert ggufs.count("q8_0") == 1


def _sampling_reaches_llama_server(server, client) -> None:
    """logit_bias, the OpenAI penalties, top_k and min_p go to llama-server and change its
    answer as they say."""
    (token,) = httpx.post(
        server.base_url + "/tokenize", json={"model": "tiny", "prompt": "예약"}
    ).json()["tokens"][-1:]
    text = httpx.post(
        server.base_url + "/detokenize", json={"model": "tiny", "tokens": [token]}
    ).json()["prompt"]

    def answer(temperature=0.0, **extra) -> str:
        reply = client.completions.create(
            model="tiny",
            prompt="주차 신청은",
            max_tokens=8,
            temperature=temperature,
            seed=5,
            extra_body=extra,
        )
        return reply.choices[0].text

    greedy = answer()
    assert answer(logit_bias={str(token): 100}) == text * 8 != greedy
    assert 1 <= answer(logit_bias={str(token): 6}, frequency_penalty=2.0).count(text) < 8
    assert answer(1.5, top_k=1) == greedy == answer(1.5, min_p=1.0)
    assert answer(1.5) != greedy  # so the line above could fail
    # response_format: llama-server decodes under the schema's grammar. Its grammar lets a
    # random-weight model put bytes that are no UTF-8 inside a string (each decodes to
    # U+FFFD, so a Korean string can exceed its maxLength): lengths are checked on the other
    # engines, the structure here.
    from tests.serve.test_structured import FORMAT, answers, without_lengths

    constrained = answers(server, 5, response_format=FORMAT)
    assert all(without_lengths(text) for text in constrained), constrained


def test_serving_on_llamacpp_without_llama_server_says_how_to_get_it(
    served_home, monkeypatch, tmp_path
):
    monkeypatch.setenv("KOLLM_HOME", str(served_home))
    monkeypatch.setenv("PATH", str(tmp_path) + ":/usr/bin:/bin")
    monkeypatch.delenv("KOLLM_LLAMA_SERVER", raising=False)
    monkeypatch.setattr("kollm.engines.llamacpp_engine.built_places", lambda: [])
    monkeypatch.setattr("shutil.which", lambda name, *a, **k: None)
    result = CliRunner().invoke(app, ["serve", "tiny@production", "--engine", "llamacpp"])
    assert result.exit_code == 2
    assert "make llama-server" in result.output


def test_kollm_serve_names_the_engine_auto_picked_and_why(served_home, monkeypatch, tmp_path):
    monkeypatch.setenv("KOLLM_HOME", str(served_home))
    monkeypatch.setattr("uvicorn.run", lambda *args, **kwargs: None)  # the first line is enough
    fake = tmp_path / "llama-server"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("KOLLM_LLAMA_SERVER", str(fake))
    found = CliRunner().invoke(app, ["serve", "tiny@production"])
    assert found.exit_code == 0, found.output
    assert "with llamacpp (auto: llama-server found at" in " ".join(found.output.split())
    monkeypatch.delenv("KOLLM_LLAMA_SERVER")
    monkeypatch.setattr("kollm.engines.llamacpp_engine.built_places", lambda: [])
    monkeypatch.setattr("shutil.which", lambda name, *a, **k: None)
    missing = CliRunner().invoke(app, ["serve", "tiny@production"])
    assert missing.exit_code == 0, missing.output
    assert "with ctranslate2 (auto: no llama-server here" in " ".join(missing.output.split())
