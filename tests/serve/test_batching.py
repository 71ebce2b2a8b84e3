"""Length-aware batching: for an engine that feeds the prompt tokens past a batch's shortest
prompt one step at a time, waiting requests are grouped by prompt length, the oldest request's
group first, and every request still gets its own answer."""

from __future__ import annotations

import asyncio

from kollm.engines.base import Capabilities, Generation, GenerationParams
from kollm.serve.batching import Batcher, length_groups
from kollm.serve.metrics import ServerMetrics


def test_a_short_prompt_among_long_ones_gets_its_own_batch_when_that_saves_steps():
    lengths = [112, 103, 125, 110, 117, 111, 28, 111]  # the serving bench's first 8 prompts
    assert length_groups(lengths, steps=32, max_size=16) == [[6], [0, 1, 2, 3, 4, 5, 7]]
    # 256 new tokens: a second batch would cost more steps than the 97 it saves
    assert length_groups(lengths, steps=256, max_size=16) == [list(range(8))]
    assert length_groups([50, 52, 49, 51], steps=8, max_size=16) == [[0, 1, 2, 3]]


def test_groups_hold_every_request_once_and_respect_the_batch_size():
    lengths = [10, 300, 12, 290, 11, 305, 13, 500, 14]
    groups = length_groups(lengths, steps=16, max_size=3)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert all(1 <= len(g) <= 3 for g in groups)
    mixed = [g for g in groups if min(lengths[i] for i in g) < 20 < max(lengths[i] for i in g)]
    assert mixed == []  # no short prompt waits out a long one's steps
    assert [7] in groups  # the 500-token prompt alone: 195 steps past the next are too many
    assert length_groups([], steps=16, max_size=3) == []


class _StepwiseEngine:
    """Echoes each prompt; its batches pay for uneven prompt lengths (as CTranslate2's do)."""

    capabilities = Capabilities(uneven_prompt_cost=True)

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def tokenize(self, text: str) -> list[int]:
        return list(range(len(text.split())))

    def generate(self, prompts, params, on_token=None):
        self.batches.append(list(prompts))
        return [Generation(p, len(p.split()), 1, "stop") for p in prompts]

    def decode(self, ids):
        return ""


def _serve(engine, prompts: list[str], max_new_tokens: int) -> list[str]:
    async def run() -> list[str]:
        batcher = Batcher(engine, "m", ServerMetrics(), max_batch=16)
        jobs = [batcher.submit(p, GenerationParams(max_new_tokens=max_new_tokens)) for p in prompts]
        batcher.start()
        answers = await asyncio.gather(*(j.future for j in jobs))
        await batcher.close()
        return [a.text for a in answers]

    return asyncio.run(run())


def test_the_batcher_runs_the_oldest_requests_length_group_first():
    short = "요약: 짧은 질문"
    longs = [" ".join(["민원"] * (100 + i)) for i in range(5)]
    engine = _StepwiseEngine()
    answers = _serve(engine, [longs[0], short, *longs[1:]], max_new_tokens=32)
    assert answers == [longs[0], short, *longs[1:]]  # each request its own answer
    assert engine.batches == [[longs[0], *longs[1:]], [short]]


def test_an_engine_that_pads_keeps_one_batch():
    class Padding(_StepwiseEngine):
        capabilities = Capabilities(uneven_prompt_cost=False)

    engine = Padding()
    prompts = ["짧다", " ".join(["긴"] * 200), "중간 길이 질문"]
    assert _serve(engine, prompts, max_new_tokens=32) == prompts
    assert engine.batches == [prompts]


def test_ctranslate2_declares_it_for_decoder_only_models(local_base, kobart_base):
    from kollm.engines.ctranslate2_engine import CTranslate2Engine

    decoder_only, seq2seq = CTranslate2Engine(local_base), CTranslate2Engine(kobart_base)
    decoder_only.load()
    seq2seq.load()
    assert decoder_only.capabilities.uneven_prompt_cost is True
    assert seq2seq.capabilities.uneven_prompt_cost is False


def test_a_prompt_the_tokenizer_fails_on_keeps_the_batcher_running():
    class Failing(_StepwiseEngine):
        def tokenize(self, text: str) -> list[int]:
            if "깨진" in text:
                raise ValueError("cannot tokenize")
            return super().tokenize(text)

    engine = Failing()
    prompts = ["깨진 입력", " ".join(["긴"] * 200), "짧다"]
    assert _serve(engine, prompts, max_new_tokens=32) == prompts  # every request answered
    assert engine.batches == [prompts]  # in arrival order, as without grouping


def test_a_chat_models_answers_are_the_same_alone_and_grouped_by_length(
    qwen2_chat_base, start_server
):
    """A Hugging Face chat base (with its chat template) behind the server on CTranslate2:
    questions of very different lengths sent together get the answers each gets alone."""
    import httpx

    server = start_server([str(qwen2_chat_base)], engine="ctranslate2", log_requests=False)
    model = httpx.get(server.base_url + "/v1/models").json()["data"][0]["id"]
    long_context = "전입신고는 주민센터에서 합니다. " * 12  # ~200 tokens of a 512 context
    questions = ["여권?", long_context + "어디서 하나요?", "전입신고는 어디서 하나요?"]
    questions += [long_context + "서류는 무엇인가요?"]

    def body(q: str) -> dict:
        messages = [{"role": "user", "content": q}]
        return {"model": model, "messages": messages, "max_tokens": 8, "temperature": 0}

    def text(reply) -> str:
        assert reply.status_code == 200, reply.text
        return reply.json()["choices"][0]["message"]["content"]

    url = server.base_url + "/v1/chat/completions"
    alone = [text(httpx.post(url, json=body(q), timeout=60)) for q in questions]

    async def together() -> list[str]:
        async with httpx.AsyncClient(timeout=60) as http:
            replies = await asyncio.gather(*(http.post(url, json=body(q)) for q in questions))
        return [text(r) for r in replies]

    assert asyncio.run(together()) == alone
    metrics = httpx.get(server.base_url + "/metrics").text
    batches = next(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("kollm:batch_size_count")
    )
    assert batches >= len(questions) + 2  # 4 alone, then 2 length groups (one batch without)
