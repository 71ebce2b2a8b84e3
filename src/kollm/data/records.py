"""Record kinds: which fields each needs, which hold text, and which identify a duplicate."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Record = dict[str, Any]


class RecordError(ValueError):
    """A record that does not fit its kind; the message names the field."""


@dataclass(frozen=True)
class RecordKind:
    name: str
    required: tuple[str, ...]
    text_fields: tuple[str, ...]
    """Fields whose text is normalised and masked (strings, lists of strings, or messages)."""
    key_fields: tuple[str, ...]
    """The input side: what dedup compares and the Hangul filter reads."""

    @property
    def required_texts(self) -> tuple[str, ...]:
        """The required fields that hold text (not a thumbs record's `label`)."""
        return tuple(f for f in self.required if f in self.text_fields)


KINDS: dict[str, RecordKind] = {
    "dialogue_summary": RecordKind(
        "dialogue_summary", ("dialogue", "summary"), ("dialogue", "summary"), ("dialogue",)
    ),
    "instruction": RecordKind(
        "instruction",
        ("instruction", "output"),
        ("instruction", "input", "output"),
        ("instruction", "input"),
    ),
    "chat": RecordKind("chat", ("messages",), ("messages",), ("messages",)),
    "preference": RecordKind(
        "preference",
        ("prompt", "chosen", "rejected"),
        ("prompt", "chosen", "rejected"),
        ("prompt", "chosen"),
    ),
    # One rated answer (KTO): `label` true for a good answer (thumbs up), false for a bad one.
    "thumbs": RecordKind(
        "thumbs",
        ("prompt", "completion", "label"),
        ("prompt", "completion"),
        ("prompt", "completion"),
    ),
    "text": RecordKind("text", ("text",), ("text",), ("text",)),
}


def field_kind(field: str) -> RecordKind:
    """The kind `kollm data clean --field NAME` uses: one text field."""
    return RecordKind("field", (field,), (field,), (field,))


def _check_messages(value: Any) -> None:
    if not isinstance(value, list) or not value:
        raise RecordError("messages: expected a non-empty list of {role, content}")
    for i, msg in enumerate(value):
        if not isinstance(msg, dict) or not isinstance(msg.get("content"), str):
            raise RecordError(f"messages[{i}]: expected an object with a string 'content'")
        if msg.get("role") not in ("system", "user", "assistant"):
            raise RecordError(f"messages[{i}].role: expected system, user or assistant")


def validate_record(record: Any, kind: RecordKind) -> Record:
    """Return `record` if it fits `kind`; raise RecordError naming the field otherwise."""
    if not isinstance(record, dict):
        raise RecordError(f"expected a JSON object, got {type(record).__name__}")
    for name in kind.required:
        if record.get(name) is None:
            raise RecordError(f"missing field '{name}'")
    if "label" in kind.required and not isinstance(record["label"], bool):
        raise RecordError("label: expected true (a good answer) or false (a bad one)")
    for name in kind.text_fields:
        value = record.get(name)
        if value is None:
            continue
        if name == "messages":
            _check_messages(value)
        elif isinstance(value, list):
            if not all(isinstance(v, str) for v in value):
                raise RecordError(f"{name}: expected a string or a list of strings")
        elif not isinstance(value, str):
            raise RecordError(f"{name}: expected a string, got {type(value).__name__}")
    return record


def field_texts(record: Record, name: str) -> list[str]:
    """Every string held by field `name` (one, a list of references, or message contents)."""
    value = record.get(name)
    if value is None:
        return []
    if name == "messages":
        return [m["content"] for m in value]
    return [value] if isinstance(value, str) else list(value)


def map_field(record: Record, name: str, fn: Callable[[str], str]) -> None:
    """Apply `fn` to each string of field `name`, in place."""
    value = record.get(name)
    if value is None:
        return
    if name == "messages":
        record[name] = [{**m, "content": fn(m["content"])} for m in value]
    elif isinstance(value, str):
        record[name] = fn(value)
    else:
        record[name] = [fn(v) for v in value]


def key_text(record: Record, fields: tuple[str, ...] | list[str]) -> str:
    """The text that identifies a record for dedup: its key fields joined by newlines."""
    return "\n".join(t for f in fields for t in field_texts(record, f))
