"""response_format through the `openai` client: a random-weight model asked for JSON under a
schema (a Korean string, an integer, an enum, an array) answers schema-valid JSON every time on
each engine that constrains decoding, and does not without the constraint (so the test can
fail); json_object gives an object; an engine that cannot constrain (CTranslate2) and a schema
that cannot be enforced get a 400 naming response_format."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest

SCHEMA = {
    "type": "object",
    "properties": {
        "민원인": {"type": "string", "minLength": 1, "maxLength": 8},
        "나이": {"type": "integer", "minimum": 0, "maximum": 120},
        "분류": {"enum": ["주차", "세금", "복지"]},
        "첨부": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3},
    },
    "required": ["민원인", "나이", "분류", "첨부"],
    "additionalProperties": False,
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "minwon", "schema": SCHEMA}}
MESSAGES = [{"role": "user", "content": "민원 내용을 JSON으로 정리해 주세요: 주차 문제입니다."}]


def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="none", max_retries=0)


def _valid(text: str, schema: dict = SCHEMA) -> bool:
    try:
        jsonschema.validate(json.loads(text), schema)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


def without_lengths(text: str) -> bool:
    """Valid under SCHEMA but for the strings' lengths."""
    schema = json.loads(json.dumps(SCHEMA).replace('"maxLength"', '"x-maxLength"'))
    return _valid(text, schema)


def answers(server, n: int, **extra) -> list[str]:
    api = client(server)
    return [
        api.chat.completions.create(
            model="tiny",
            messages=MESSAGES,
            max_tokens=160,
            temperature=1.0,
            seed=seed,
            **extra,
        )
        .choices[0]
        .message.content
        for seed in range(n)
    ]


def test_a_json_schema_is_kept_on_every_request_on_transformers(start_server):
    server = start_server(engine="transformers")
    constrained = answers(server, 20, response_format=FORMAT)
    assert all(_valid(text) for text in constrained), [t for t in constrained if not _valid(t)]
    assert len(set(constrained)) > 1  # sampled, not one canned answer
    assert not any(_valid(text) for text in answers(server, 3))
    # streamed, the chunks join to valid JSON too
    stream = client(server).chat.completions.create(
        model="tiny",
        messages=MESSAGES,
        max_tokens=160,
        temperature=0,
        response_format=FORMAT,
        stream=True,
    )
    assert _valid("".join(c.choices[0].delta.content or "" for c in stream))
    # json_object: an object; unbounded, so a random model may run out of tokens inside it
    reply = client(server).chat.completions.create(
        model="tiny",
        messages=MESSAGES,
        max_tokens=60,
        temperature=0,
        response_format={"type": "json_object"},
    )
    text, finish = reply.choices[0].message.content, reply.choices[0].finish_reason
    assert text.startswith("{") and not _valid(text)
    assert finish == "length" or isinstance(json.loads(text), dict)


def test_an_engine_that_cannot_constrain_refuses_by_name(start_server):
    server = start_server(engine="ctranslate2")
    with pytest.raises(openai.BadRequestError) as caught:
        answers(server, 1, response_format=FORMAT)
    body = caught.value.body
    assert body["param"] == "response_format"
    assert "transformers" in body["message"] and "llamacpp" in body["message"]


@pytest.mark.parametrize(
    ("response_format", "says"),
    [
        ({"type": "json_schema"}, "json_schema"),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "frob"}}}, "frob"),
        ({"type": "yaml"}, "type"),
        ({"type": "json_object", "extra": 1}, "extra"),
    ],
)
def test_a_bad_response_format_is_a_400_naming_it(start_server, response_format, says):
    server = start_server(engine="transformers")
    body = {"model": "tiny", "messages": MESSAGES, "response_format": response_format}
    reply = httpx.post(server.base_url + "/v1/chat/completions", json=body, timeout=60)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"].startswith("response_format") and says in error["message"]


def test_the_unconstrained_fallback_says_whether_each_answer_is_valid(start_server):
    """serve.unconstrained_json: CTranslate2 answers response_format free, and each choice
    (streamed: its last chunk) says whether its answer is valid under the schema."""
    api = client(start_server(engine="ctranslate2", unconstrained_json=True))
    ask = dict(model="tiny", messages=MESSAGES, response_format=FORMAT, max_tokens=24)
    reply = api.chat.completions.create(**ask, n=3, temperature=1.0)
    for choice in reply.choices:
        assert choice.model_extra["schema_valid"] is _valid(choice.message.content)
    last = [c.choices[0] for c in api.chat.completions.create(**ask, stream=True) if c.choices]
    assert last[-1].model_extra["schema_valid"] is False  # the random model writes no JSON
    plain = api.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=4)
    assert "schema_valid" not in plain.choices[0].model_extra  # only where a schema was asked


def test_valid_json_checks_the_schema():
    from kollm.engines.structured import valid_json

    schema = json.dumps(SCHEMA)
    good = {"민원인": "김민수", "나이": 41, "분류": "주차", "첨부": []}
    assert valid_json(json.dumps(good, ensure_ascii=False), schema)
    assert not valid_json(json.dumps({**good, "분류": "교통"}, ensure_ascii=False), schema)
    assert not valid_json('{"민원인": "김', schema)
