"""The one prompt format: records and chat requests -> prompts, for train, eval, serve and loop.

A `PromptFormat` is what a model was trained with, stored beside its weights
(`kollm_prompt.json`) and with its registry version, so the server builds the same prompt that
training built:

- `template`: the recipe's prompt and response templates, filled field by name
  (`{instruction}`, `{input}`, `{dialogue}` ...). A line of the template that holds only a
  field whose value is empty is left out, so `instruction` + `input` records and a chat request
  that sends both in one message (as LLaMA-Factory's alpaca format joins them) meet in one prompt.
- `chat_template`: the tokenizer's chat template over every turn (system included); each
  assistant turn of a `chat` record is one training example with its history as the prompt.
"""

from __future__ import annotations

import json
import string
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

FORMAT_FILE = "kollm_prompt.json"

DEFAULT_TEMPLATES = {
    "dialogue_summary": ("다음 대화를 요약하세요.\n{dialogue}\n요약:", " {summary}"),
    "instruction": ("### 질문: {instruction}\n{input}\n\n### 답변:", " {output}"),
    "preference": ("{prompt}", " {chosen}"),
    "thumbs": ("{prompt}", " {completion}"),
    "text": ("", "{text}"),
}
# The field a chat request's user text fills, by record kind; the rest of a record's input
# fields join it in that order (instruction, then input).
REQUEST_FIELDS = {
    "dialogue_summary": ("dialogue",),
    "instruction": ("instruction", "input"),
    "preference": ("prompt",),
    "thumbs": ("prompt",),
    "text": ("text",),
}
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")


class PromptError(ValueError):
    """A record or request the format cannot turn into a prompt; names the field."""


Messages = list[dict[str, str]]


@dataclass(frozen=True)
class PromptFormat:
    kind: str
    """The record kind the model was trained on."""
    style: str = "template"
    """`template` (the recipe's templates) or `chat_template` (the tokenizer's)."""
    prompt_template: str = ""
    response_template: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str | None) -> PromptFormat | None:
        return cls(**json.loads(text)) if text else None


def resolve_format(kind: str, prompt: str | None = None, response: str | None = None):
    """The format of a record kind, with the recipe's templates where it sets them."""
    if kind == "chat":
        return PromptFormat("chat", "chat_template")
    if kind not in DEFAULT_TEMPLATES and (prompt is None or response is None):
        raise PromptError(
            f"records of kind '{kind}' need train.prompt_template and response_template"
        )
    default_prompt, default_response = DEFAULT_TEMPLATES.get(kind, ("", ""))
    return PromptFormat(
        kind,
        "template",
        prompt if prompt is not None else default_prompt,
        response if response is not None else default_response,
    )


def recipe_format(recipe) -> PromptFormat:
    """The format a recipe trains with (its data kind and train templates)."""
    t = recipe.train
    return resolve_format(
        recipe.data.kind, t.prompt_template if t else None, t.response_template if t else None
    )


# --- templates -------------------------------------------------------------------------------


def template_fields(template: str) -> list[str]:
    """The fields of a template, in the order they appear, each once."""
    names = [name for _, name, _, _ in string.Formatter().parse(template) if name]
    return list(dict.fromkeys(names))


def _first(value: Any) -> Any:
    """A list of references trains on its first one."""
    return value[0] if isinstance(value, list) and value else value


def render(template: str, record: dict[str, Any]) -> str:
    """Fill `template` from `record` by field name; a line holding only an empty field goes."""
    fields = template_fields(template)
    missing = [name for name in fields if name not in record]
    if missing:
        raise PromptError(
            f"template field(s) {missing} missing from record {record.get('id', '?')}"
        )
    values = {name: str(_first(record.get(name)) or "") for name in fields}
    lines = [
        line
        for line in template.split("\n")
        if not (line.strip() in {f"{{{n}}}" for n in fields} and not values[line.strip()[1:-1]])
    ]
    return "\n".join(lines).format(**values)


def references(fmt: PromptFormat, record: dict[str, Any]) -> list[str]:
    """Every reference answer of a record (a list of summaries gives several)."""
    if fmt.style == "chat_template":
        return [_split_chat(record)[1]["content"].strip()]
    fields = template_fields(fmt.response_template)
    if len(fields) == 1 and isinstance(record.get(fields[0]), list):
        return [str(v).strip() for v in record[fields[0]]]
    return [render(fmt.response_template, record).strip()]


# --- conversations ---------------------------------------------------------------------------


def _split_chat(record: dict[str, Any]) -> tuple[Messages, dict[str, str]]:
    """(history, last assistant turn) of a chat record."""
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise PromptError(f"record {record.get('id', '?')}: messages: expected a list of turns")
    if messages[-1].get("role") != "assistant":
        raise PromptError(
            f"record {record.get('id', '?')}: messages: the last turn must be the assistant's"
        )
    return messages[:-1], messages[-1]


def _request_field_order(fmt: PromptFormat) -> list[str]:
    fields = template_fields(fmt.prompt_template)
    preferred = [f for f in REQUEST_FIELDS.get(fmt.kind, ()) if f in fields]
    return preferred or fields[:1]


def record_messages(fmt: PromptFormat, record: dict[str, Any]) -> Messages:
    """The conversation a user would send for `record` (everything before its answer)."""
    if fmt.style == "chat_template":
        return _split_chat(record)[0]
    parts = [str(_first(record.get(f)) or "") for f in _request_field_order(fmt)]
    return [{"role": "user", "content": "\n".join(p for p in parts if p)}]


def request_record(fmt: PromptFormat, messages: Messages) -> dict[str, str]:
    """A chat request as a record of the format's fields: the last user turn fills the first
    request field (`instruction`, `dialogue` ...); the others are empty."""
    users = [m["content"] for m in messages if m.get("role") == "user"]
    text = users[-1] if users else (messages[-1]["content"] if messages else "")
    fields = template_fields(fmt.prompt_template)
    first = _request_field_order(fmt)[:1]
    return {name: (text if name in first else "") for name in fields}


RAG_INSTRUCTION = (
    "다음 자료만 근거로 질문에 답하세요. 답에 쓴 자료의 번호를 [1]처럼 적고, "
    "자료에 없는 내용은 지어내지 마세요."
)


def rag_messages(messages: Messages, passages: list[tuple[str, str]]) -> Messages:
    """The conversation with its last user turn put in a context prompt: the numbered
    passages ((source, text) pairs, cited as [1], [2] ...) and then the question. Earlier
    turns stay as they were, so a follow-up keeps its history."""
    last = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=None)
    if last is None or not passages:
        return messages
    context = "\n\n".join(
        f"[{n}] 출처: {source}\n{text}" for n, (source, text) in enumerate(passages, 1)
    )
    question = messages[last]["content"]
    prompt = f"{RAG_INSTRUCTION}\n\n{context}\n\n질문: {question}"
    return [*messages[:last], {**messages[last], "content": prompt}, *messages[last + 1 :]]


def chat_prompt(
    tokenizer, messages: Messages, tools: list[dict] | None = None, template_kwargs=None
) -> str:
    """Every turn through the tokenizer's chat template, ending where the assistant speaks;
    `tools` (OpenAI's shape) go to the template, which shows them to the model its way, and
    `template_kwargs` are the template's own variables (Qwen3's `enable_thinking`)."""
    if not getattr(tokenizer, "chat_template", None):
        raise PromptError(
            "the tokenizer has no chat template: set train.chat_template (`chatml` or a Jinja "
            "template), or train with a prompt_template"
        )
    return tokenizer.apply_chat_template(
        messages,
        tools=tools or None,
        tokenize=False,
        add_generation_prompt=True,
        **(template_kwargs or {}),
    )


def uses_chat_template(fmt: PromptFormat | None, tokenizer) -> bool:
    """Whether a chat request's prompt comes from the tokenizer's chat template (not the
    trained prompt_template, nor the plain script of a model without a template)."""
    trained = fmt is not None and fmt.style == "template"
    return not trained and bool(getattr(tokenizer, "chat_template", None))


def takes_tools(fmt: PromptFormat | None, tokenizer) -> bool:
    """Whether the model's prompt is its chat template and that template shows tools."""
    if fmt is not None and fmt.style == "template":
        return False
    return "tools" in (getattr(tokenizer, "chat_template", None) or "")


def request_prompt(
    fmt: PromptFormat | None,
    messages: Messages,
    tokenizer=None,
    tools: list[dict] | None = None,
    template_kwargs: dict | None = None,
) -> str:
    """The prompt for a chat request: the model's format; without one, the tokenizer's chat
    template (with the request's tools and template variables), else a plain `role: text`
    script of every turn."""
    if tools:
        return chat_prompt(tokenizer, messages, tools, template_kwargs)
    if fmt is not None and fmt.style == "template":
        return render(fmt.prompt_template, request_record(fmt, messages))
    if fmt is not None or getattr(tokenizer, "chat_template", None):
        return chat_prompt(tokenizer, messages, None, template_kwargs)
    lines = [f"{m['role']}: {m['content']}" for m in messages]
    return "\n".join([*lines, "assistant:"])


def record_prompt(fmt: PromptFormat, record: dict[str, Any], tokenizer=None) -> str:
    """The prompt training (and eval) builds for a record."""
    if fmt.style == "chat_template":
        return chat_prompt(tokenizer, _split_chat(record)[0])
    return render(fmt.prompt_template, record)


def _chat_completion(tokenizer, history: Messages, answer: dict[str, str]) -> tuple[str, str]:
    prompt = chat_prompt(tokenizer, history)
    full = tokenizer.apply_chat_template([*history, answer], tokenize=False)
    if not full.startswith(prompt):
        raise PromptError("the chat template does not render a conversation as prompt + answer")
    completion = full[len(prompt) :]
    eos = tokenizer.eos_token or ""
    if eos and eos in completion:  # what follows the end of the turn is the next turn's
        completion = completion[: completion.rindex(eos) + len(eos)]
    return prompt, completion


def training_examples(fmt: PromptFormat, record: dict[str, Any], tokenizer=None):
    """(prompt, completion) pairs of a record: one, or one per assistant turn of a chat."""
    if fmt.style == "template":
        return [(render(fmt.prompt_template, record), render(fmt.response_template, record))]
    history, _ = _split_chat(record)
    messages = [*history, record["messages"][-1]]
    return [
        _chat_completion(tokenizer, messages[:i], turn)
        for i, turn in enumerate(messages)
        if turn.get("role") == "assistant" and i > 0
    ]


def request_example(fmt: PromptFormat, messages: Messages, answer: str, tokenizer=None):
    """(prompt, completion) of an answer given to a chat request, as training renders it."""
    if fmt.style == "chat_template":
        return _chat_completion(
            tokenizer, messages, {"role": "assistant", "content": answer.strip()}
        )
    fields = template_fields(fmt.response_template)
    completion = render(fmt.response_template, dict.fromkeys(fields, answer.strip()))
    return request_prompt(fmt, messages, tokenizer), completion


# --- stored beside the weights -----------------------------------------------------------------


def save_format(model_dir: Path, fmt: PromptFormat) -> None:
    """Write the prompt format beside a model's weights."""
    (Path(model_dir) / FORMAT_FILE).write_text(fmt.to_json(), encoding="utf-8")


def load_format(model_dir: Path) -> PromptFormat | None:
    """The prompt format saved beside a model's weights, or None."""
    path = Path(model_dir) / FORMAT_FILE
    return PromptFormat.from_json(path.read_text(encoding="utf-8")) if path.exists() else None


def set_chat_template(tokenizer, template: str) -> None:
    """Give a tokenizer a chat template: `chatml` (adding its turn tokens) or Jinja text."""
    if template == "chatml":
        tokenizer.add_special_tokens({"additional_special_tokens": list(CHATML_TOKENS)})
        template = CHATML
    tokenizer.chat_template = template
