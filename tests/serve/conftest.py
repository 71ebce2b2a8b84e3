"""A Qwen2.5-shaped chat model whose template shows tools and teaches Hermes-style calls, for
the tests of tools through the `openai` client and through LangChain."""

from __future__ import annotations

import pytest

from tests.conftest import qwen2_chat_model

# Qwen2.5's chat template, cut to the parts that concern tools (its system prompt words them
# the same way): the tools as JSON in <tools></tools>, calls in <tool_call></tool_call>, a
# tool's answer as a user turn in <tool_response></tool_response>.
HERMES_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}"
    "{% else %}You are a helpful assistant.{% endif %}\n\n# Tools\n\n"
    "You may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
    "{% for tool in tools %}\n{{ tool | tojson }}{% endfor %}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
    "{%- else %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' or (message.role == 'assistant' and not message.tool_calls)"
    " %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n"
    "{%- elif message.role == 'assistant' %}<|im_start|>assistant"
    "{% if message.content %}\n{{ message.content }}{% endif %}"
    "{% for call in message.tool_calls %}\n<tool_call>\n"
    '{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}'
    "\n</tool_call>{% endfor %}<|im_end|>\n"
    "{%- elif message.role == 'tool' %}<|im_start|>user\n<tool_response>\n"
    "{{ message.content }}\n</tool_response><|im_end|>\n{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
)


@pytest.fixture(scope="session")
def hermes_base(tmp_path_factory):
    """The model dir, built once: the servers only read it."""
    from transformers import AutoTokenizer

    out = qwen2_chat_model(tmp_path_factory.mktemp("qwen25-tools"), max_positions=2048)
    tok = AutoTokenizer.from_pretrained(str(out))
    tok.chat_template = HERMES_TEMPLATE
    tok.save_pretrained(str(out))
    return out
