"""vLLM's request extensions, as clients written for vLLM send them: each one that would
change the answer and that kollm does not honour is a 400 naming it (its default value is
answered), `stop_token_ids` naming the model's own end ids and `chat_template_kwargs` reaching
the chat template are honoured, and what OpenAI itself refuses (stream_options without a
stream, image parts for a text model) is refused the same way."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import QWEN2_CHAT_TEMPLATE, qwen2_chat_model

MESSAGES = [{"role": "user", "content": "안녕하세요"}]

# (field, a value that changes the answer, the default that does not)
BOTH = [
    ("ignore_eos", True, False),
    ("min_tokens", 5, 0),
    ("skip_special_tokens", False, True),
    ("spaces_between_special_tokens", False, True),
    ("include_stop_str_in_output", True, False),
    ("truncate_prompt_tokens", 10, None),
    ("prompt_logprobs", 1, None),
    ("allowed_token_ids", [1, 2], []),
    ("bad_words", ["안녕"], []),
    ("use_beam_search", True, False),
    ("length_penalty", 0.5, 1.0),
    ("return_tokens_as_token_ids", True, False),
    ("priority", 1, 0),
    ("structured_outputs", {"json": {"type": "object"}}, None),
]
CHAT = [
    ("add_special_tokens", True, False),
    ("echo", True, False),
    ("add_generation_prompt", False, True),
    ("continue_final_message", True, False),
    ("chat_template", "{{ messages }}", None),
    ("documents", [{"title": "a", "text": "b"}], None),
    ("reasoning_effort", "low", None),
    ("include_reasoning", False, True),
]
COMPLETIONS = [("add_special_tokens", False, True), ("prompt_embeds", "AAAA", None)]


def _post(server, path: str, body: dict) -> httpx.Response:
    return httpx.post(server.base_url + path, json={"model": "tiny", **body}, timeout=60)


def test_vllm_fields_that_change_the_answer_are_refused_by_name(start_server):
    server = start_server()
    chat = {"messages": MESSAGES, "max_tokens": 2}
    completion = {"prompt": "안녕", "max_tokens": 2}
    cases = [("/v1/chat/completions", chat, c) for c in BOTH + CHAT]
    cases += [("/v1/completions", completion, c) for c in BOTH + COMPLETIONS]
    for path, body, (field, changing, default) in cases:
        refused = _post(server, path, {**body, field: changing})
        assert refused.status_code == 400, (path, field, refused.text)
        assert refused.json()["error"]["param"] == field, (path, field)
        answered = _post(server, path, {**body, field: default})
        assert answered.status_code == 200, (path, field, answered.text)


def test_stream_options_as_openai_and_vllm_take_them(start_server):
    server = start_server()
    body = {"messages": MESSAGES, "max_tokens": 2}
    cases = [
        ({"stream_options": {"include_usage": True}}, "stream_options"),  # no stream
        (
            {"stream": True, "stream_options": {"continuous_usage_stats": True}},
            "stream_options.continuous_usage_stats",
        ),
        ({"stream": True, "stream_options": {"usage": True}}, "stream_options.usage"),
    ]
    for extra, param in cases:
        reply = _post(server, "/v1/chat/completions", {**body, **extra})
        assert reply.status_code == 400 and reply.json()["error"]["param"] == param, reply.text
    streamed = _post(
        server,
        "/v1/chat/completions",
        {**body, "stream": True, "stream_options": {"include_usage": True}},
    )
    assert streamed.status_code == 200 and '"usage": {"prompt_tokens"' in streamed.text


def test_an_image_part_is_refused_not_dropped(start_server):
    server = start_server()
    parts = [
        {"type": "text", "text": "이 그림을 설명해 주세요"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    ]
    reply = _post(
        server, "/v1/chat/completions", {"messages": [{"role": "user", "content": parts}]}
    )
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == "messages.0.content"
    assert "image_url" in reply.json()["error"]["message"]
    text_only = _post(
        server, "/v1/chat/completions", {"messages": [{"role": "user", "content": parts[:1]}]}
    )
    assert text_only.status_code == 200


def test_stop_token_ids_may_name_the_models_own_end_ids(start_server):
    server = start_server()
    ends = list(server.manager.models["tiny"].engine.end_ids)
    body = {"messages": MESSAGES, "max_tokens": 2}
    ok = _post(server, "/v1/chat/completions", {**body, "stop_token_ids": ends})
    assert ok.status_code == 200, ok.text
    other = max(ends) + 1
    refused = _post(server, "/v1/chat/completions", {**body, "stop_token_ids": [other]})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "stop_token_ids"
    assert str(other) in refused.json()["error"]["message"]


@pytest.fixture(scope="module")
def thinking_base(tmp_path_factory):
    """A Qwen3-like chat template: `enable_thinking: false` opens the answer with an empty
    think block, as Qwen3's template does."""
    from transformers import AutoTokenizer

    out = qwen2_chat_model(tmp_path_factory.mktemp("thinking"))
    tok = AutoTokenizer.from_pretrained(str(out))
    tok.chat_template = QWEN2_CHAT_TEMPLATE + (
        "{%- if add_generation_prompt and enable_thinking is defined and not enable_thinking %}"
        "{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    )
    tok.save_pretrained(str(out))
    return out


def test_chat_template_kwargs_reach_the_template(start_server, thinking_base):
    server = start_server(refs=[str(thinking_base)], engine="transformers")
    model = httpx.get(server.base_url + "/v1/models").json()["data"][0]["id"]
    body = {"model": model, "messages": MESSAGES, "max_tokens": 1}

    def prompt_tokens(**extra) -> int:
        reply = httpx.post(server.base_url + "/v1/chat/completions", json={**body, **extra})
        assert reply.status_code == 200, reply.text
        return reply.json()["usage"]["prompt_tokens"]

    thinking = prompt_tokens()
    assert prompt_tokens(chat_template_kwargs={"enable_thinking": True}) == thinking
    assert prompt_tokens(chat_template_kwargs={"enable_thinking": False}) > thinking
    reserved = httpx.post(
        server.base_url + "/v1/chat/completions",
        json={**body, "chat_template_kwargs": {"tokenize": True}},
    )
    assert reserved.status_code == 400 and "tokenize" in reserved.json()["error"]["message"]


def test_chat_template_kwargs_on_a_trained_prompt_format_are_refused(start_server):
    server = start_server()  # tiny: its prompts are its trained template
    body = {"messages": MESSAGES, "chat_template_kwargs": {"enable_thinking": False}}
    reply = _post(server, "/v1/chat/completions", body)
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "chat_template_kwargs"
