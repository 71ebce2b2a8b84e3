"""Shared-prompt caching in the CTranslate2 engine: a prefix the batch's prompts share is
passed as the static prompt and cached; the answers are the same as without it, and the
prefixes kept stay few. The batcher lets requests that arrive together share one batch."""

from __future__ import annotations

import asyncio

from kollm.engines.base import Capabilities, Generation, GenerationParams
from kollm.engines.ctranslate2_engine import CTranslate2Engine, SharedPrefixes
from kollm.serve.batching import Batcher
from kollm.serve.metrics import ServerMetrics

SYSTEM = "당신은 구청 민원 안내 도우미입니다. 정확하고 친절하게 답하세요. " * 8


def test_answers_are_the_same_with_the_prefix_cached(local_base):
    engine = CTranslate2Engine(local_base)
    engine.load()
    prompts = [SYSTEM + f"질문 {i}: 전입신고는 어디서 하나요?" for i in range(4)]
    params = GenerationParams(max_new_tokens=8)
    engine.prefixes = None
    plain = [g.text for g in engine.generate(prompts, params)]
    engine.prefixes = SharedPrefixes(min_tokens=16)
    cached = [g.text for g in engine.generate(prompts, params)]
    again = [g.text for g in engine.generate(prompts[:1], params)]  # alone: a recent prompt
    assert cached == plain and again == plain[:1]
    (prefix,) = engine.prefixes.known
    system_tokens = len(engine.tokenizer(SYSTEM)["input_ids"])
    assert len(prefix) >= system_tokens - 1


def test_few_prefixes_are_kept():
    prefixes = SharedPrefixes(min_tokens=3, max_prefixes=2)
    assert prefixes.choose([list("abcdefgh1"), list("abcdefgh2")]) == 8
    # a longer shared part that starts with a known prefix is cut back to it
    assert prefixes.choose([list("abcdefghxy1"), list("abcdefghxy2")]) == 8
    assert prefixes.choose([list("zz1"), list("zz2")]) == 0  # too short
    assert prefixes.choose([list("qrstu1"), list("qrstu2")]) == 5
    assert prefixes.choose([list("mnopq1"), list("mnopq2")]) == 0  # the two kept are full
    assert prefixes.choose([["solo"]]) == 0


class _Recorder:
    capabilities = Capabilities()

    def __init__(self):
        self.batches = []

    def generate(self, prompts, params, on_token=None):
        self.batches.append(len(prompts))
        return [Generation("ok", 1, 1, "stop") for _ in prompts]

    def decode(self, ids):
        return ""


def test_requests_arriving_a_few_ms_apart_share_a_batch():
    async def run():
        engine = _Recorder()
        batcher = Batcher(engine, "m", ServerMetrics(), max_batch=16, max_wait_s=0.005)
        batcher.start()
        jobs = []
        for i in range(8):  # one every 3 ms: a 5 ms window alone would split them
            jobs.append(batcher.submit(f"p{i}", GenerationParams()))
            await asyncio.sleep(0.003)
        await asyncio.gather(*(j.future for j in jobs))
        await batcher.close()
        return engine.batches

    assert asyncio.run(run()) == [8]


def test_a_token_callback_that_returns_its_text_neither_stops_nor_breaks_generation(local_base):
    """CTranslate2 ends a sequence whose step callback returns a truthy value and fails on one
    it cannot cast; a callback handed to generate may return anything (a decoder's delta)."""
    from kollm.engines.base import IncrementalDecoder

    engine = CTranslate2Engine(local_base)
    engine.load()
    prompts = ["전입신고는 어디서 하나요?", "여권은 어떻게 만드나요?"]
    params = GenerationParams(max_new_tokens=8)
    plain = engine.generate(prompts, params)
    decoders = [IncrementalDecoder(engine.decode) for _ in prompts]
    deltas: list[list[str]] = [[], []]

    def push(index: int, token: int) -> str:
        deltas[index].append(decoders[index].push(token))
        return deltas[index][-1]

    streamed = engine.generate(prompts, params, push)
    assert [g.text for g in streamed] == [g.text for g in plain]
    assert [g.completion_tokens for g in streamed] == [g.completion_tokens for g in plain]
    streamed_text = [
        "".join(d) + decoder.finish() for d, decoder in zip(deltas, decoders, strict=True)
    ]
    assert streamed_text == [g.text for g in plain]  # every token reached its callback
