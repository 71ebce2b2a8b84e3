"""Tools through the `openai` client, against a Qwen2.5-shaped model whose chat template shows
tools and teaches Hermes-style calls: a required or named call comes back in OpenAI's
`tool_calls` shape (streamed too) with arguments valid under the tool's parameters; the tool's
answer goes back as a `tool` turn; `tool_choice: none` answers as text; an engine that cannot
constrain refuses a required call by name; a model whose template shows no tools refuses
them by name."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest

from tests.conftest import qwen2_chat_model
from tests.serve.conftest import HERMES_TEMPLATE

PARAMETERS = {
    "type": "object",
    "properties": {
        "city": {"enum": ["서울", "부산", "대구"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "도시의 날씨 예보",
            "parameters": PARAMETERS,
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "parameters": {"type": "object", "properties": {}, "additionalProperties": False},
        },
    },
]
ASK = [{"role": "user", "content": "서울 날씨 사흘 치 알려 줘"}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}


def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="none", max_retries=0)


def _model(server) -> str:
    return client(server).models.list().data[0].id


def test_a_named_call_comes_back_as_tool_calls_and_its_answer_goes_back(start_server, hermes_base):
    server = start_server(refs=[str(hermes_base)], engine="transformers")
    api, model = client(server), _model(server)
    for seed in range(5):
        reply = api.chat.completions.create(
            model=model,
            messages=ASK,
            tools=TOOLS,
            tool_choice=NAMED,
            max_tokens=150,
            temperature=1.0,
            seed=seed,
        )
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls", choice
        (call,) = choice.message.tool_calls[:1]
        assert call.type == "function" and call.function.name == "get_weather"
        jsonschema.validate(json.loads(call.function.arguments), PARAMETERS)
    # streamed: the call arrives in delta.tool_calls, the finish reason says so
    chunks = list(
        api.chat.completions.create(
            model=model,
            messages=ASK,
            tools=TOOLS,
            tool_choice="required",
            parallel_tool_calls=False,
            max_tokens=150,
            temperature=0,
            stream=True,
        )
    )
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert calls and calls[0].function.name in ("get_weather", "get_time") and calls[0].id
    json.loads(calls[0].function.arguments)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    # the call and the tool's answer go back; with tool_choice none the model answers text
    history = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"기온": 21, "하늘": "맑음"}'},
    ]
    final = api.chat.completions.create(
        model=model, messages=history, tools=TOOLS, tool_choice="none", max_tokens=8
    )
    assert final.choices[0].finish_reason in ("stop", "length")
    assert final.choices[0].message.tool_calls is None
    assert isinstance(final.choices[0].message.content, str)


def test_without_the_constraint_the_model_calls_nothing(start_server, hermes_base):
    """So the test above could fail: the random model, free, writes no valid call."""
    server = start_server(refs=[str(hermes_base)], engine="transformers")
    reply = client(server).chat.completions.create(
        model=_model(server), messages=ASK, tools=TOOLS, max_tokens=40, temperature=0
    )
    assert reply.choices[0].message.tool_calls is None
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_ctranslate2_reads_calls_but_cannot_require_one(start_server, hermes_base):
    server = start_server(refs=[str(hermes_base)], engine="ctranslate2")
    api, model = client(server), _model(server)
    auto = api.chat.completions.create(model=model, messages=ASK, tools=TOOLS, max_tokens=8)
    assert auto.choices[0].finish_reason in ("stop", "length")
    with pytest.raises(openai.BadRequestError) as caught:
        api.chat.completions.create(
            model=model, messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=8
        )
    assert caught.value.body["param"] == "tool_choice"
    assert "transformers" in caught.value.body["message"]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": TOOLS}, "tools"),  # tiny's prompt is its trained format: no tools in it
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice",
        ),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools.0.function.name"),
    ],
)
def test_tools_a_model_cannot_take_are_refused_by_name(start_server, extra, param):
    server = start_server(engine="ctranslate2")
    body = {"model": "tiny", "messages": ASK, "max_tokens": 4, **extra}
    reply = httpx.post(server.base_url + "/v1/chat/completions", json=body, timeout=60)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == param


@pytest.fixture(scope="module")
def untaught_base(tmp_path_factory):
    """A model whose chat template shows the tools but teaches a call format kollm does not
    recognise (`<call>`): only `serve.tool_parser` says how its calls are written."""
    from transformers import AutoTokenizer

    out = qwen2_chat_model(tmp_path_factory.mktemp("untaught"), max_positions=2048)
    tok = AutoTokenizer.from_pretrained(str(out))
    tok.chat_template = HERMES_TEMPLATE.replace("tool_call>", "call>")
    tok.save_pretrained(str(out))
    return out


def test_the_recipes_tool_parser_reads_calls_the_template_does_not_name(
    start_server, untaught_base
):
    ask = {"messages": ASK, "tools": TOOLS, "max_tokens": 4}
    guessed = start_server(refs=[str(untaught_base)], engine="ctranslate2")
    reply = httpx.post(
        guessed.base_url + "/v1/chat/completions", json={"model": _model(guessed), **ask}
    )
    assert reply.status_code == 400 and "hermes" in reply.json()["error"]["message"]
    told = start_server(refs=[str(untaught_base)], engine="ctranslate2", tool_parser="hermes")
    reply = httpx.post(told.base_url + "/v1/chat/completions", json={"model": _model(told), **ask})
    assert reply.status_code == 200, reply.text


def test_an_unknown_tool_parser_stops_kollm_serve_by_name():
    import subprocess
    import sys
    from pathlib import Path

    kollm = str(Path(sys.executable).parent / "kollm")
    done = subprocess.run(
        [kollm, "serve", "tiny", "--tool-parser", "qwen"], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "tool_parser: expected one of 'auto', 'hermes'" in done.stderr
