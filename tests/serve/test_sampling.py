"""The OpenAI sampling surface through the `openai` client: top_k, min_p, repetition,
presence and frequency penalties and logit_bias are honoured by the engines that can (the
answer changes as the setting says), refused by name by those that cannot, and the request
fields an engine does not honour (tools and response_format on CTranslate2, the legacy
functions ...) get a 400 naming the field instead of an answer that ignored them."""

from __future__ import annotations

import httpx
import openai
import pytest

from kollm.engines.base import GenerationParams

PROMPT = "#Person1#: 안녕하세요, 치과 예약을 하고 싶은데요.\n#Person2#:"


def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="none", max_retries=0)


def _token(server) -> int:
    """An ordinary token of the served model: the first of '예약'."""
    ids = httpx.post(server.base_url + "/tokenize", json={"model": "tiny", "prompt": "예약"})
    return ids.json()["tokens"][-1]


def test_logit_bias_and_penalties_steer_the_transformers_engine(start_server):
    server = start_server(engine="transformers")
    api = client(server)
    token = _token(server)
    text = httpx.post(
        server.base_url + "/detokenize", json={"model": "tiny", "tokens": [token]}
    ).json()["prompt"]

    def answer(**extra) -> openai.types.Completion:
        return api.completions.create(
            model="tiny", prompt=PROMPT, max_tokens=8, temperature=0, extra_body=extra
        )

    plain = answer().choices[0].text
    biased = answer(logit_bias={str(token): 100})
    assert biased.choices[0].text == text * 8 != plain  # +100: the token every time
    # a frequency penalty outweighs a small bias after the token has come a few times
    small = answer(logit_bias={str(token): 6}).choices[0].text
    penalised = answer(logit_bias={str(token): 6}, frequency_penalty=2.0).choices[0].text
    assert small == text * 8
    assert 1 <= penalised.count(text) < 8
    # presence: once is enough to lose the bias of 1.5
    present = answer(logit_bias={str(token): 1.5}, presence_penalty=2.0).choices[0].text
    assert present.count(text) <= 1
    # banned: -100 keeps it out even when a sample would pick it
    banned = api.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": text * 5}],
        max_tokens=12,
        temperature=1.0,
        seed=3,
        logit_bias={str(token): -100},
    )
    assert text not in banned.choices[0].message.content


def test_top_k_1_and_min_p_1_sample_the_greedy_answer(start_server):
    server = start_server(engine="transformers")
    api = client(server)
    greedy = api.completions.create(model="tiny", prompt=PROMPT, max_tokens=10, temperature=0)
    for extra in ({"top_k": 1}, {"min_p": 1.0}):
        sampled = api.completions.create(
            model="tiny", prompt=PROMPT, max_tokens=10, temperature=1.5, seed=7, extra_body=extra
        )
        assert sampled.choices[0].text == greedy.choices[0].text, extra
    wild = api.completions.create(
        model="tiny", prompt=PROMPT, max_tokens=10, temperature=1.5, seed=7
    )
    assert wild.choices[0].text != greedy.choices[0].text  # so the two above could fail


def test_ctranslate2_honours_top_k_and_refuses_what_it_cannot(start_server):
    server = start_server(engine="ctranslate2")
    api = client(server)
    greedy = api.completions.create(model="tiny", prompt=PROMPT, max_tokens=10, temperature=0)
    top1 = api.completions.create(
        model="tiny", prompt=PROMPT, max_tokens=10, temperature=1.5, extra_body={"top_k": 1}
    )
    assert top1.choices[0].text == greedy.choices[0].text
    for field, value in (
        ("presence_penalty", 0.5),
        ("frequency_penalty", -0.5),
        ("min_p", 0.1),
        ("logit_bias", {"5": 3}),
        ("seed", 5),  # with temperature 1: a sample it could not repeat
    ):
        with pytest.raises(openai.BadRequestError) as caught:
            api.chat.completions.create(
                model="tiny",
                messages=[{"role": "user", "content": "안녕"}],
                max_tokens=4,
                extra_body={field: value},
            )
        error = caught.value.body
        assert error["param"] == field and "ctranslate2" in error["message"]
        assert "transformers" in error["message"] and "llamacpp" in error["message"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tools", [{"type": "function", "function": {"name": "f", "parameters": {}}}]),
        ("tool_choice", "required"),
        ("response_format", {"type": "json_object"}),
        ("top_logprobs", 3),
        ("functions", [{"name": "f"}]),
        ("guided_json", {"type": "object"}),
    ],
)
def test_fields_kollm_does_not_honour_are_refused_by_name(start_server, field, value):
    server = start_server(engine="ctranslate2")
    body = {"model": "tiny", "messages": [{"role": "user", "content": "안녕"}], field: value}
    reply = httpx.post(server.base_url + "/v1/chat/completions", json=body, timeout=60)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == field


def test_off_values_of_those_fields_are_answered(start_server):
    server = start_server(engine="ctranslate2")
    reply = client(server).chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "안녕"}],
        max_tokens=4,
        tools=[],
        tool_choice="none",
        response_format={"type": "text"},
        logprobs=False,
    )
    assert reply.choices[0].finish_reason in ("stop", "length")
    suffix = httpx.post(
        server.base_url + "/v1/completions",
        json={"model": "tiny", "prompt": "안녕", "max_tokens": 2, "suffix": "끝", "best_of": 1},
    )
    assert suffix.status_code == 400 and suffix.json()["error"]["param"] == "suffix"


@pytest.mark.parametrize(
    ("bias", "says"),
    [({"99999999": 5}, "vocabulary"), ({"abc": 5}, "token ids"), ({"3": 101}, "between")],
)
def test_a_bad_logit_bias_is_a_400_naming_it(start_server, bias, says):
    server = start_server(engine="transformers")
    body = {"model": "tiny", "prompt": "안녕", "max_tokens": 2, "logit_bias": bias}
    reply = httpx.post(server.base_url + "/v1/completions", json=body, timeout=60)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"].startswith("logit_bias") and says in reply.text


def test_defaults_leave_the_engines_sampling_off():
    """Nothing asked, nothing set: an OpenAI request samples from every token."""
    from kollm.engines.base import sampling_used

    assert sampling_used(GenerationParams()) == []
    assert sampling_used(GenerationParams(seed=1)) == []  # greedy: a seed changes nothing
    assert sampling_used(GenerationParams(top_k=5, logit_bias=((1, 2.0),))) == [
        "top_k",
        "logit_bias",
    ]


@pytest.mark.parametrize("engine", ["ctranslate2", "transformers"])
def test_n_choices_are_sampled_apart_and_counted_once(start_server, engine):
    server = start_server(engine=engine)
    api = client(server)
    messages = [{"role": "user", "content": "주차 신청은 어떻게 하나요?"}]

    seed = 11 if engine == "transformers" else None  # CTranslate2 refuses a seeded sample

    def ask(n: int):
        return api.chat.completions.create(
            model="tiny", messages=messages, max_tokens=12, temperature=1.2, seed=seed, n=n
        )

    one, three = ask(1), ask(3)
    assert [c.index for c in three.choices] == [0, 1, 2]
    texts = [c.message.content for c in three.choices]
    assert len(set(texts)) >= 2
    if seed is not None:
        assert texts[0] == one.choices[0].message.content  # choice 0 takes the request's seed
        assert [c.message.content for c in ask(3).choices] == texts  # the same again
    assert three.usage.prompt_tokens == one.usage.prompt_tokens
    assert three.usage.completion_tokens > one.usage.completion_tokens
    # completions: choices run prompt by prompt
    reply = api.completions.create(
        model="tiny", prompt=["안녕하세요", "감사합니다"], max_tokens=4, temperature=0, n=2
    )
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    assert reply.choices[0].text == reply.choices[1].text  # greedy: n alike
    single = api.completions.create(model="tiny", prompt="안녕하세요", max_tokens=4, temperature=0)
    assert reply.choices[0].text == single.choices[0].text


def test_n_beyond_the_limit_is_a_400_naming_it(start_server):
    server = start_server(engine="ctranslate2")
    base = {"model": "tiny", "messages": [{"role": "user", "content": "안녕"}], "max_tokens": 2}
    reply = httpx.post(server.base_url + "/v1/chat/completions", json={**base, "n": 17})
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "n", reply.text
