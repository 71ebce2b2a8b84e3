"""Chat logprobs and several choices, through the `openai` client: `logprobs` with
`top_logprobs` give each answer token's log-probability and its likeliest alternatives (the
same streamed as not), `n` choices stream interleaved under their indexes and match the
same request answered whole, and the usage counts the prompt once."""

from __future__ import annotations

import math
from collections import defaultdict

import httpx
import openai
import pytest

MESSAGES = [{"role": "user", "content": "치과 예약을 하고 싶은데요."}]


def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="none", max_retries=0)


@pytest.mark.parametrize("engine", ["ctranslate2", "transformers"])
def test_chat_logprobs_describe_the_answer_streamed_or_not(start_server, engine):
    api = client(start_server(engine=engine))
    ask = dict(model="tiny", messages=MESSAGES, max_tokens=8, temperature=0, logprobs=True)
    reply = api.chat.completions.create(**ask, top_logprobs=3)
    choice = reply.choices[0]
    tokens = choice.logprobs.content
    assert "".join(t.token for t in tokens) == choice.message.content
    assert len(tokens) == reply.usage.completion_tokens
    for token in tokens:
        assert token.logprob <= 0 and bytes(token.bytes).decode() == token.token
        alternatives = [t.logprob for t in token.top_logprobs]
        assert len(alternatives) == 3 and alternatives == sorted(alternatives, reverse=True)
        # greedy: the token taken is the likeliest one
        assert math.isclose(token.logprob, alternatives[0], abs_tol=1e-3)

    streamed = []
    for chunk in api.chat.completions.create(**ask, top_logprobs=3, stream=True):
        if chunk.choices and chunk.choices[0].logprobs:
            streamed += chunk.choices[0].logprobs.content
    assert [t.token for t in streamed] == [t.token for t in tokens]
    assert [t.logprob for t in streamed] == pytest.approx([t.logprob for t in tokens], abs=1e-4)

    plain = api.chat.completions.create(**ask)  # no top_logprobs: no alternatives
    assert (
        plain.choices[0].logprobs.content and not plain.choices[0].logprobs.content[0].top_logprobs
    )
    assert api.chat.completions.create(**{**ask, "logprobs": False}).choices[0].logprobs is None


def test_top_logprobs_without_logprobs_is_refused(start_server):
    server = start_server()
    body = {"model": "tiny", "messages": MESSAGES, "top_logprobs": 2}
    reply = httpx.post(server.base_url + "/v1/chat/completions", json=body)
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "top_logprobs"


def _streamed_choices(stream) -> tuple[dict[int, str], dict[int, str], list]:
    texts, finishes, usage = defaultdict(str), {}, []
    for chunk in stream:
        if chunk.usage:
            usage.append(chunk.usage)
        for choice in chunk.choices:
            texts[choice.index] += getattr(choice, "text", None) or (
                (getattr(choice, "delta", None) and choice.delta.content) or ""
            )
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    return dict(texts), finishes, usage


def test_n_choices_stream_under_their_indexes(start_server):
    api = client(start_server(engine="transformers"))
    ask = dict(model="tiny", messages=MESSAGES, max_tokens=10, temperature=1.0, seed=7, n=3)
    whole = api.chat.completions.create(**ask)
    stream = api.chat.completions.create(**ask, stream=True, stream_options={"include_usage": True})
    texts, finishes, usage = _streamed_choices(stream)
    assert texts == {c.index: c.message.content for c in whole.choices}
    assert finishes == {c.index: c.finish_reason for c in whole.choices}
    assert len(set(texts.values())) > 1  # seeds seed, seed + 1, ...: the choices differ
    assert len(usage) == 1 and usage[0].completion_tokens == whole.usage.completion_tokens
    assert usage[0].prompt_tokens == whole.usage.prompt_tokens  # counted once, not n times


def test_n_text_completions_stream_under_their_indexes(start_server):
    api = client(start_server(engine="transformers"))
    ask = dict(model="tiny", prompt="안녕하세요", max_tokens=6, temperature=1.0, seed=3, n=2)
    whole = api.completions.create(**ask)
    texts, finishes, _ = _streamed_choices(api.completions.create(**ask, stream=True))
    assert texts == {c.index: c.text for c in whole.choices}
    assert set(finishes) == {0, 1}
