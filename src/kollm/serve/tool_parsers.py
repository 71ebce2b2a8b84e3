"""Tool calls out of a model's answer, in the formats of the families organisations run,
after vLLM's tool parsers (read, not copied): Hermes-style `<tool_call>{...}</tool_call>`
(Qwen2.5, Qwen3 and many Korean fine-tunes), Llama-3.1's bare JSON (`{"name": ...,
"parameters": {...}}`, optionally after `<|python_tag|>`), and Mistral's `[TOOL_CALLS]
[...]`. The parser is chosen from the chat template, which names the format it teaches.

A call whose JSON does not parse is not a call: the answer stays text (finish_reason `stop`),
never an error. `ToolStream` does the same for a streamed answer: text passes through until a
call may be starting (a marker's prefix is held back, as a stop string's is), and the rest is
parsed once the answer ends."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # a JSON object's text, as OpenAI's `function.arguments`
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")


@dataclass(frozen=True)
class Parsed:
    content: str | None  # the answer's text outside the calls (None: calls only)
    calls: tuple[ToolCall, ...] = ()


def _call(obj, argument_keys=("arguments", "parameters")) -> ToolCall | None:
    """A ToolCall from one decoded JSON call, or None when it is not shaped as one."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return None
    arguments = next((obj[k] for k in argument_keys if k in obj), {})
    if isinstance(arguments, str):  # some models write the arguments as JSON text already
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    return ToolCall(obj["name"], json.dumps(arguments, ensure_ascii=False))


def _loads(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return None


class HermesParser:
    """`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, one or several, with text
    around them; the last closing tag may be missing (the answer ended at the end token)."""

    name = "hermes"
    marker = "<tool_call>"
    _pattern = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)

    def parse(self, text: str) -> Parsed:
        if self.marker not in text:
            return Parsed(text)
        calls = [_call(_loads(m.group(1))) for m in self._pattern.finditer(text)]
        if not calls or None in calls:
            return Parsed(text)
        content = text[: text.index(self.marker)].strip()
        return Parsed(content or None, tuple(calls))


class Llama3JsonParser:
    """Llama-3.1's JSON tool calls: the whole answer is `{"name": ..., "parameters": {...}}`
    (several joined by `;`), optionally after `<|python_tag|>`."""

    name = "llama3_json"
    marker = "{"

    def parse(self, text: str) -> Parsed:
        body = text.strip().removeprefix("<|python_tag|>").strip()
        if not body.startswith("{"):
            return Parsed(text)
        calls = [_call(_loads(part)) for part in _split_top_level(body, ";")]
        if not calls or None in calls:
            return Parsed(text)
        return Parsed(None, tuple(calls))


class MistralParser:
    """Mistral's `[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]` after any text."""

    name = "mistral"
    marker = "[TOOL_CALLS]"

    def parse(self, text: str) -> Parsed:
        if self.marker not in text:
            return Parsed(text)
        head, _, tail = text.partition(self.marker)
        items = _loads(tail.strip())
        items = [items] if isinstance(items, dict) else items
        if not isinstance(items, list) or not items:
            return Parsed(text)
        calls = [_call(item) for item in items]
        if None in calls:
            return Parsed(text)
        return Parsed(head.strip() or None, tuple(calls))


def forced_calls(text: str) -> tuple[ToolCall, ...]:
    """The calls of an answer decoded under `calls_schema` (a JSON list of calls); none when
    it ended before the list was whole."""
    items = _loads(text)
    if not isinstance(items, list):
        return ()
    calls = [_call(item) for item in items]
    return () if not calls or None in calls else tuple(calls)


def calls_schema(tools: list[dict], parallel: bool = True) -> dict:
    """The JSON schema an answer must meet when a call is required (tool_choice `required`
    or a named function): a list of calls of `tools`, each with its parameters' schema, as
    vLLM constrains it."""
    one = [
        {
            "type": "object",
            "properties": {
                "name": {"const": t["function"]["name"]},
                "arguments": t["function"].get("parameters") or {"type": "object"},
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for t in tools
    ]
    items = one[0] if len(one) == 1 else {"anyOf": one}
    schema = {"type": "array", "items": items, "minItems": 1}
    return schema if parallel else {**schema, "maxItems": 1}


PARSERS = {p.name: p for p in (HermesParser(), Llama3JsonParser(), MistralParser())}


def parser_for(chat_template: str | None, name: str | None = None):
    """The parser `name` names, else the one whose format the chat template teaches; None
    when the template shows no tool-call format."""
    if name is not None:
        if name not in PARSERS:
            raise ValueError(f"tool_parser: '{name}' is not one of {', '.join(PARSERS)}")
        return PARSERS[name]
    template = chat_template or ""
    if "<tool_call>" in template:
        return PARSERS["hermes"]
    if "[TOOL_CALLS]" in template:
        return PARSERS["mistral"]
    if "<|python_tag|>" in template or "ipython" in template:
        return PARSERS["llama3_json"]
    return None


def _split_top_level(text: str, separator: str) -> list[str]:
    """`text` split at `separator` outside JSON strings and brackets."""
    parts, depth, start, in_string, escaped = [], 0, 0, False, False
    for i, c in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
            continue
        if c == '"':
            in_string = True
        elif c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
        elif c == separator and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


class ToolStream:
    """A streamed answer with tools on: text deltas pass through until the parser's marker
    may be starting; from there the answer is held and parsed when it ends (`finish`)."""

    def __init__(self, parser) -> None:
        self.parser = parser
        self.text = ""  # the whole answer so far
        self.sent = 0  # characters of it already passed on
        self.holding = False

    def push(self, delta: str) -> str:
        """The part of `delta` that is surely text (possibly empty)."""
        self.text += delta
        if self.holding:
            return ""
        at = self._marker_at()
        if at is not None:
            self.holding = True
            out, self.sent = self.text[self.sent : at], at
            return out
        keep = self._partial_marker()
        out = self.text[self.sent : len(self.text) - keep]
        self.sent = len(self.text) - keep
        return out

    def finish(self) -> tuple[str, tuple[ToolCall, ...]]:
        """The text not yet passed on, and the calls, once the answer has ended. An answer
        that turned out to hold no valid call is passed on whole as text."""
        if not self.holding:
            rest, self.sent = self.text[self.sent :], len(self.text)
            return rest, ()
        parsed = self.parser.parse(self.text)
        if not parsed.calls:
            return self.text[self.sent :], ()
        return "", parsed.calls

    def _marker_at(self) -> int | None:
        marker = self.parser.marker
        if marker == "{":  # Llama-3.1: a call is the whole answer, so only at its start
            stripped = self.text.lstrip().removeprefix("<|python_tag|>").lstrip()
            return self.sent if self.sent == 0 and stripped.startswith("{") else None
        at = self.text.find(marker, self.sent)
        return None if at < 0 else at

    def _partial_marker(self) -> int:
        """How many characters at the end could begin the marker (held back)."""
        marker = self.parser.marker
        if marker == "{":
            head = self.text.lstrip()
            return len(self.text) if self.sent == 0 and "<|python_tag|>".startswith(head) else 0
        for n in range(min(len(marker) - 1, len(self.text)), 0, -1):
            if self.text.endswith(marker[:n]):
                return n
        return 0
