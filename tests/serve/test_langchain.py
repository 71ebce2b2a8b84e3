"""A real client framework against `kollm serve` (issue 27): LangChain's `ChatOpenAI`, with a
tool written the LangChain way and bound by name, gets the call (whole and streamed), runs
the tool on it, sends the tool's answer back and gets a text answer; a request the server
refuses reaches the LangChain app as the `openai` client's BadRequestError."""

from __future__ import annotations

import json
from typing import Annotated, Literal

import httpx
import openai
import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import Field

ASK = HumanMessage("서울 날씨 사흘 치 알려 줘")


@tool(parse_docstring=True)
def get_weather(city: Literal["서울", "부산", "대구"], days: Annotated[int, Field(ge=1, le=7)]):
    """도시의 날씨 예보를 며칠 치 알려 준다.

    Args:
        city: 도시 이름
        days: 며칠 치 예보인지 (1-7)
    """
    return json.dumps({"도시": city, "일수": days, "기온": 21, "하늘": "맑음"}, ensure_ascii=False)


def chat_model(server, **options) -> ChatOpenAI:
    """ChatOpenAI as an app would point it at kollm: the served model by its listed name."""
    listed = httpx.get(server.base_url + "/v1/models", timeout=30).json()
    return ChatOpenAI(
        base_url=server.base_url + "/v1",
        api_key="none",
        model=listed["data"][0]["id"],
        temperature=0,
        max_tokens=150,
        max_retries=0,
        **options,
    )


def _forced_call(llm: ChatOpenAI) -> AIMessage:
    return llm.bind_tools([get_weather], tool_choice="get_weather").invoke([ASK])


def test_langchain_calls_the_tool_and_answers_from_its_result(start_server, hermes_base):
    server = start_server(refs=[str(hermes_base)], engine="transformers")
    llm = chat_model(server)
    asked = _forced_call(llm)
    assert asked.response_metadata["finish_reason"] == "tool_calls"
    assert not asked.invalid_tool_calls
    (call,) = asked.tool_calls
    assert call["name"] == "get_weather" and call["id"]
    # the tool validates its arguments (city one of three, days 1 to 7) before it runs
    result = get_weather.invoke(call)
    assert isinstance(result, ToolMessage) and result.tool_call_id == call["id"]
    assert json.loads(result.content)["도시"] == call["args"]["city"]
    final = llm.invoke([ASK, asked, result])
    assert final.response_metadata["finish_reason"] in ("stop", "length")
    assert not final.tool_calls and not final.invalid_tool_calls
    assert isinstance(final.content, str) and final.content.strip()


def test_langchain_streams_the_same_call(start_server, hermes_base):
    """LangChain's streaming parser reads kollm's delta.tool_calls: the chunks add up to the
    call the whole answer gives, and to its usage (asked for with stream_options)."""
    server = start_server(refs=[str(hermes_base)], engine="transformers")
    llm = chat_model(server, stream_usage=True)
    whole = _forced_call(llm)
    chunks = list(llm.bind_tools([get_weather], tool_choice="get_weather").stream([ASK]))
    assert len(chunks) > 1
    streamed = sum(chunks[1:], chunks[0])
    assert streamed.response_metadata["finish_reason"] == "tool_calls"
    assert not streamed.invalid_tool_calls
    (call,) = streamed.tool_calls
    assert call["name"] == "get_weather" and call["id"]
    assert call["args"] == whole.tool_calls[0]["args"]
    assert streamed.usage_metadata == whole.usage_metadata
    assert isinstance(get_weather.invoke(call), ToolMessage)


def test_a_request_the_server_refuses_reaches_langchain_as_bad_request(start_server, hermes_base):
    """ctranslate2 cannot constrain decoding, so kollm refuses a named tool_choice: LangChain
    passes on the 400 with the field it names."""
    server = start_server(refs=[str(hermes_base)], engine="ctranslate2")
    with pytest.raises(openai.BadRequestError) as caught:
        _forced_call(chat_model(server))
    assert caught.value.status_code == 400
    assert caught.value.body["param"] == "tool_choice"
    assert "transformers" in caught.value.body["message"]
