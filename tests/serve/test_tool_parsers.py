"""Tool calls parsed out of answers written the way each family writes them (the formats of
Qwen2.5's and Hermes' chat templates, Llama-3.1's JSON tool calling and Mistral's
[TOOL_CALLS], as their model cards and templates show them), whole and streamed in pieces cut
anywhere; a call whose JSON is broken stays text."""

from __future__ import annotations

import json
import random

import pytest

from kollm.serve.tool_parsers import PARSERS, ToolStream, parser_for

WEATHER = {"city": "서울", "unit": "celsius"}

CASES = [
    (  # Qwen2.5 / Hermes: text, then one call a tag pair
        "hermes",
        '날씨를 확인해 볼게요.\n<tool_call>\n{"name": "get_weather", "arguments": '
        '{"city": "서울", "unit": "celsius"}}\n</tool_call>',
        "날씨를 확인해 볼게요.",
        [("get_weather", WEATHER)],
    ),
    (  # two calls, no text, the last closing tag cut by the end token
        "hermes",
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "서울", "unit": "celsius"}}'
        '\n</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {"tz": "Asia/Seoul"}}',
        None,
        [("get_weather", WEATHER), ("get_time", {"tz": "Asia/Seoul"})],
    ),
    (  # Llama-3.1: the answer is the call, parameters not arguments
        "llama3_json",
        '{"name": "get_weather", "parameters": {"city": "서울", "unit": "celsius"}}',
        None,
        [("get_weather", WEATHER)],
    ),
    (  # Llama-3.1 with <|python_tag|>, two calls joined by ';', a ';' inside a string
        "llama3_json",
        '<|python_tag|>{"name": "search", "parameters": {"q": "민원; 주차"}}; '
        '{"name": "get_time", "parameters": {"tz": "Asia/Seoul"}}',
        None,
        [("search", {"q": "민원; 주차"}), ("get_time", {"tz": "Asia/Seoul"})],
    ),
    (  # Mistral: text, then the list of calls, arguments once given as JSON text
        "mistral",
        '확인하겠습니다. [TOOL_CALLS] [{"name": "get_weather", "arguments": '
        '"{\\"city\\": \\"서울\\", \\"unit\\": \\"celsius\\"}"}]',
        "확인하겠습니다.",
        [("get_weather", WEATHER)],
    ),
]


def _calls(calls):
    return [(c.name, json.loads(c.arguments)) for c in calls]


@pytest.mark.parametrize(("name", "answer", "content", "calls"), CASES)
def test_calls_are_parsed_whole_and_streamed(name, answer, content, calls):
    parser = PARSERS[name]
    parsed = parser.parse(answer)
    assert parsed.content == content and _calls(parsed.calls) == calls
    assert len({c.id for c in parsed.calls}) == len(calls)  # each call its own id
    rng = random.Random(7)
    for _ in range(20):  # pieces cut anywhere, inside the marker too
        stream, text = ToolStream(parser), ""
        cuts = sorted(rng.sample(range(1, len(answer)), 6))
        for a, b in zip([0, *cuts], [*cuts, len(answer)], strict=True):
            text += stream.push(answer[a:b])
        rest, streamed = stream.finish()
        text += rest
        assert _calls(streamed) == calls
        assert text.strip() == (content or "")


@pytest.mark.parametrize(
    ("name", "answer"),
    [
        (
            "hermes",
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": "서울"\n</tool_call>',
        ),
        ("hermes", '<tool_call>\n{"arguments": {}}\n</tool_call>'),  # no name
        ("llama3_json", '{"name": "get_weather", "parameters": [1, 2]}'),
        ("mistral", "[TOOL_CALLS] [{'name': 'get_weather'}]"),  # not JSON
        ("hermes", "도구 없이 답합니다."),
    ],
)
def test_a_broken_call_stays_text(name, answer):
    parser = PARSERS[name]
    assert parser.parse(answer).calls == () and parser.parse(answer).content == answer
    stream = ToolStream(parser)
    text = "".join(stream.push(answer[i : i + 5]) for i in range(0, len(answer), 5))
    rest, calls = stream.finish()
    assert calls == () and text + rest == answer


def test_the_parser_is_chosen_from_the_chat_template():
    assert parser_for("{{ '<tool_call>\\n' }}").name == "hermes"
    assert parser_for("[TOOL_CALLS] {{ x }}").name == "mistral"
    assert parser_for("{% if role == 'ipython' %}").name == "llama3_json"
    assert parser_for("{{ messages }}") is None and parser_for(None) is None
    assert parser_for(None, "mistral").name == "mistral"
    with pytest.raises(ValueError, match="tool_parser"):
        parser_for(None, "pythonic")


@pytest.mark.parametrize(
    ("parallel", "names"), [(True, ["get_weather", "get_time"]), (False, ["get_weather"])]
)
def test_parallel_tool_calls_false_keeps_the_first_call(parallel, names):
    """An answer that calls two tools, for a request that allowed one call at a time."""
    from types import SimpleNamespace

    from kollm.engines.base import Generation
    from kollm.serve.frames import _message

    text = CASES[1][1]
    ctx = SimpleNamespace(
        forced_tools=False,
        tool_parser=PARSERS["hermes"],
        body=SimpleNamespace(parallel_tool_calls=parallel),
    )
    message, finish = _message(ctx, Generation(text, 10, 40, "stop"))
    assert finish == "tool_calls"
    assert [c["function"]["name"] for c in message["tool_calls"]] == names
