"""Prompt and answer templates: a record becomes (prompt, completion) for training and eval."""

from __future__ import annotations

import string
from typing import Any

from kollm.config import DEFAULT_TEMPLATES


class TemplateError(ValueError):
    """A template naming a field the records do not have."""


def templates_for(kind: str, prompt: str | None, response: str | None) -> tuple[str, str]:
    if kind not in DEFAULT_TEMPLATES and (prompt is None or response is None):
        raise TemplateError(
            f"records of kind '{kind}' need train.prompt_template and response_template"
        )
    default_prompt, default_response = DEFAULT_TEMPLATES.get(kind, ("", ""))
    return (
        prompt if prompt is not None else default_prompt,
        response if response is not None else default_response,
    )


def template_fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def _first(value: Any) -> Any:
    """A list of references trains on its first one."""
    return value[0] if isinstance(value, list) and value else value


def render(template: str, record: dict[str, Any]) -> str:
    values = {name: _first(record.get(name)) or "" for name in template_fields(template)}
    missing = [name for name in template_fields(template) if name not in record]
    if missing:
        raise TemplateError(
            f"template field(s) {missing} missing from record {record.get('id', '?')}"
        )
    return template.format(**values)


def references(record: dict[str, Any], response_template: str) -> list[str]:
    """Every reference answer of a record (a list of summaries gives several)."""
    fields = template_fields(response_template)
    if len(fields) == 1:
        (name,) = fields
        value = record.get(name)
        if isinstance(value, list):
            return [str(v).strip() for v in value]
    return [render(response_template, record).strip()]


def fill(template: str, text: str) -> str:
    """Put `text` into the template's field (its first, if several); the others stay empty."""
    fields = sorted(template_fields(template))
    return template.format(**{name: (text if i == 0 else "") for i, name in enumerate(fields)})


def fit_prompt(tokenizer, prompt: str, answer_tokens: int, max_length: int) -> str:
    """Cut the start of `prompt` so that it and an answer of `answer_tokens` fit `max_length`.

    TRL truncates prompt + answer from the end, which would cut the answer (the only part with a
    loss) first; a long dialogue should lose its opening turns instead.
    """
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    room = max_length - answer_tokens - 2  # BOS/EOS
    if len(ids) <= room:
        return prompt
    return tokenizer.decode(ids[-max(room, 1) :])


def fit_examples(
    tokenizer, rows: list[dict[str, str]], answer_keys: tuple[str, ...], max_length: int
):
    """`fit_prompt` over rows with a `prompt` and one or more answers."""
    fitted = []
    for row in rows:
        longest = max(
            len(tokenizer(row[k], add_special_tokens=False)["input_ids"]) for k in answer_keys
        )
        fitted.append({**row, "prompt": fit_prompt(tokenizer, row["prompt"], longest, max_length)})
    return fitted
