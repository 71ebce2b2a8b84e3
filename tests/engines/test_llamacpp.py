"""The llamacpp engine on llama.cpp's real `llama-server` (built by `make llama-server`, which
.ci/run runs): a tiny GGUF made from a fixture model by llama.cpp's own converter, greedy
answers as the transformers engine gives them, tokens streamed one by one, requests in flight
together in llama-server's slots, a request that is abandoned freeing its slot, a crashed
llama-server started again once, and LoRA adapters picked per request."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from kollm.cluster import llamacpp
from kollm.engines.base import GenerationParams
from kollm.engines.llamacpp_engine import (
    LlamaCppEngine,
    LlamaCppError,
    LlamaServerMissing,
    find_llama_server,
)


def _missing() -> str | None:
    try:
        find_llama_server()
    except LlamaServerMissing:
        return "no llama-server here: `make llama-server` builds it (.ci/run does)"
    if not (llamacpp.converter_dir() / "convert_lora_to_gguf.py").is_file():
        return "llama.cpp's converters are not fetched (python -m kollm.cluster.llamacpp fetch)"
    return None


needs_server = pytest.mark.skipif(_missing() is not None, reason=str(_missing()))

PROMPT = "<|im_start|>user\n주차 신청은 언제 하나요?<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def gguf(qwen2_chat_base, tmp_path_factory):
    from kollm.cluster.export import export_model

    out = tmp_path_factory.mktemp("gguf")
    return export_model(str(qwen2_chat_base), "gguf", out, "f16").path


@pytest.fixture(scope="module")
def engine(qwen2_chat_base, gguf):
    engine = LlamaCppEngine(qwen2_chat_base, gguf, parallel=4, threads=2)
    engine.load()
    yield engine
    engine.unload()


@needs_server
def test_greedy_answers_are_the_transformers_engines(engine, qwen2_chat_base):
    from kollm.engines.transformers_engine import TransformersEngine

    reference = TransformersEngine(qwen2_chat_base)
    reference.load()
    params = GenerationParams(max_new_tokens=12)
    got, want = [], []
    (answer,) = engine.generate([PROMPT], params, on_token=lambda _i, t: got.append(t))
    reference.generate([PROMPT], params, on_token=lambda _i, t: want.append(t))
    # random weights in f16 against float32: the first tokens agree, ties may part later
    assert got[:6] == want[:6]
    assert answer.prompt_tokens == len(engine.tokenizer(PROMPT)["input_ids"])
    assert answer.completion_tokens == len(got) and engine.decode(got) == answer.text


@needs_server
def test_tokens_arrive_one_by_one_while_it_generates(engine):
    arrivals: list[float] = []
    params = GenerationParams(max_new_tokens=64)
    (answer,) = engine.generate(
        [PROMPT], params, on_token=lambda _i, _t: arrivals.append(time.monotonic())
    )
    assert len(arrivals) == answer.completion_tokens >= 8
    assert arrivals[-1] - arrivals[0] > 0  # streamed, not handed over at the end


def _processing(engine) -> int:
    slots = httpx.get(engine.url + "/slots", timeout=5).json()
    return sum(1 for s in slots if s.get("is_processing"))


@needs_server
def test_requests_run_together_in_its_slots_and_an_abandoned_one_frees_its_slot(engine):
    params = GenerationParams(max_new_tokens=400, stop=())
    cancels = [threading.Event() for _ in range(4)]
    results: list = [None] * 4

    def ask(i):
        results[i] = engine.generate([PROMPT + "가" * i], params, cancel=cancels[i])[0]

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    most, deadline = 0, time.monotonic() + 20
    while time.monotonic() < deadline and most < 4:
        most = max(most, _processing(engine))
        time.sleep(0.02)
    for event in cancels:
        event.set()
    for t in threads:
        t.join(30)
    assert most == 4  # all four in flight at once, in their own slots
    assert all(r.finish_reason in ("cancelled", "stop", "length") for r in results)
    deadline = time.monotonic() + 10
    while _processing(engine) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processing(engine) == 0  # the closed streams stopped their slots


@needs_server
def test_a_crashed_llama_server_is_started_again_once(qwen2_chat_base, gguf):
    engine = LlamaCppEngine(qwen2_chat_base, gguf, parallel=1, threads=1)
    engine.load()
    try:
        engine.process.kill()
        engine.process.wait(10)
        (answer,) = engine.generate([PROMPT], GenerationParams(max_new_tokens=4))
        assert answer.completion_tokens >= 1
        assert engine.health() == {"llama_server": "up", "restarts": 1}
        engine.process.kill()
        engine.process.wait(10)
        with pytest.raises(LlamaCppError, match="died again"):
            engine.generate([PROMPT], GenerationParams(max_new_tokens=4))
        assert (
            engine.health()["llama_server"] == "down" and "died again" in engine.health()["failure"]
        )
    finally:
        engine.unload()


@needs_server
def test_lora_adapters_are_picked_per_request_and_the_base_runs_without(
    qwen2_chat_base, gguf, tmp_path
):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from kollm.cluster.gguf_files import lora_gguf

    model = AutoModelForCausalLM.from_pretrained(str(qwen2_chat_base))
    config = LoraConfig(r=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    torch.manual_seed(1)
    peft = get_peft_model(model, config)
    with torch.no_grad():  # a strong adapter, so that its answers differ from the base's
        for name, weight in peft.named_parameters():
            if "lora_" in name:
                weight.mul_(40)
    peft.save_pretrained(str(tmp_path / "civil"))
    adapter = lora_gguf(tmp_path / "civil", qwen2_chat_base)
    assert lora_gguf(tmp_path / "civil", qwen2_chat_base) == adapter  # converted once

    plain = LlamaCppEngine(qwen2_chat_base, gguf, parallel=2, threads=2)
    with_lora = LlamaCppEngine(qwen2_chat_base, gguf, {"civil": adapter}, parallel=2, threads=2)
    plain.load()
    with_lora.load()
    try:
        params = GenerationParams(max_new_tokens=10)
        (base,) = plain.generate([PROMPT], params)
        (off,) = with_lora.generate([PROMPT], params)
        (on,) = with_lora.generate([PROMPT], params, adapter="civil")
        assert off.text == base.text and on.text != base.text
        with pytest.raises(ValueError, match="no LoRA adapter 'other'"):
            with_lora.generate([PROMPT], params, adapter="other")
    finally:
        plain.unload()
        with_lora.unload()


def _upstream(replies: list[bytes]) -> int:
    """A loopback server answering its n-th connection with replies[n] (b"": hung up at once,
    as a server does that drops a kept-alive connection or dies under the request)."""
    import socket

    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        for reply in replies:
            conn, _ = listener.accept()
            with conn:
                if reply:
                    conn.recv(65536)
                    conn.sendall(reply)
        listener.close()

    threading.Thread(target=serve, daemon=True).start()
    return listener.getsockname()[1]


def _faked(tmp_path, replies: list[bytes], command: list[str]) -> LlamaCppEngine:
    import subprocess

    engine = LlamaCppEngine(tmp_path, tmp_path / "m.gguf")
    engine.port = _upstream(replies)
    engine.process = subprocess.Popen(command)
    return engine


ANSWER = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
    b'data: {"content": "\xeb\x84\xa4", "tokens": [7]}\n\n'
    b'data: {"content": "", "stop": true, "stop_type": "eos", "tokens_predicted": 1}\n\n'
)


def test_a_connection_dropped_before_the_answer_is_sent_again(tmp_path):
    engine = _faked(tmp_path, [b"", ANSWER], ["sleep", "30"])
    try:
        (answer,) = engine.generate([[1, 2, 3]], GenerationParams(max_new_tokens=4))
        assert (answer.text, answer.finish_reason, answer.completion_tokens) == ("네", "stop", 1)
    finally:
        engine.unload()


def test_a_server_that_dies_under_a_request_is_named_with_its_log(tmp_path):
    (tmp_path / ".m.gguf.llama-server.log").write_text("GGML_ASSERT(lora) failed\n")
    engine = _faked(tmp_path, [b""], ["sh", "-c", "sleep 0.2; exit 134"])
    time.sleep(0.05)
    try:
        with pytest.raises(
            LlamaCppError,
            match=r"died during the request \(exit code 134.*"
            r"GGML_ASSERT\(lora\) failed",
        ):
            engine.generate([[1, 2, 3]], GenerationParams(max_new_tokens=4))
    finally:
        engine.unload()


def test_a_missing_binary_names_how_to_get_one(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no llama-server on it
    monkeypatch.delenv("KOLLM_LLAMA_SERVER", raising=False)
    monkeypatch.setattr("kollm.engines.llamacpp_engine.built_places", lambda: [])
    with pytest.raises(LlamaServerMissing, match="make llama-server"):
        find_llama_server()
