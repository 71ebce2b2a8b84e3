"""Quality filters: length bounds, Hangul ratio, empty or placeholder-only fields."""

from __future__ import annotations

from kollm.config import LengthBounds
from kollm.data.records import Record, field_texts
from kollm.data.steps.base import Drop, Step
from kollm.text.morphemes import get_tokenizer
from kollm.text.normalize import hangul_ratio, is_placeholder_only


class LengthFilter(Step):
    """Drops a record when a field's characters or tokens fall outside its bounds."""

    name = "length_filter"

    def __init__(self, bounds: dict[str, LengthBounds], tokenizer: str = "whitespace") -> None:
        super().__init__()
        self.bounds = bounds
        needs_tokens = any(b.min_tokens or b.max_tokens for b in bounds.values())
        self._tokenizer = get_tokenizer(tokenizer) if needs_tokens else None

    def _check(self, name: str, text: str, bounds: LengthBounds) -> Drop | None:
        chars = len(text)
        if chars < bounds.min_chars:
            return Drop(f"{name}_too_short_chars", {"chars": chars})
        if bounds.max_chars is not None and chars > bounds.max_chars:
            return Drop(f"{name}_too_long_chars", {"chars": chars})
        if self._tokenizer is None:
            return None
        tokens = len(self._tokenizer.tokenize(text))
        if tokens < bounds.min_tokens:
            return Drop(f"{name}_too_short_tokens", {"tokens": tokens})
        if bounds.max_tokens is not None and tokens > bounds.max_tokens:
            return Drop(f"{name}_too_long_tokens", {"tokens": tokens})
        return None

    def process(self, record: Record) -> Drop | None:
        for name, bounds in self.bounds.items():
            text = "\n".join(field_texts(record, name))
            verdict = self._check(name, text, bounds)
            if verdict is not None:
                return verdict
        return None


class HangulRatioFilter(Step):
    """Drops records whose input fields are mostly not Korean."""

    name = "hangul_filter"

    def __init__(self, fields: tuple[str, ...], min_ratio: float) -> None:
        super().__init__()
        self.fields, self.min_ratio = fields, min_ratio

    def process(self, record: Record) -> Drop | None:
        ratio = hangul_ratio(" ".join(t for f in self.fields for t in field_texts(record, f)))
        if ratio < self.min_ratio:
            return Drop("low_hangul_ratio", {"hangul_ratio": round(ratio, 3)})
        return None


class PlaceholderOnlyFilter(Step):
    """Drops records with an empty field, or one that is nothing but `#...#` placeholders."""

    name = "empty_filter"

    def __init__(self, fields: tuple[str, ...]) -> None:
        super().__init__()
        self.fields = fields

    def process(self, record: Record) -> Drop | None:
        for name in self.fields:
            if name not in record or record[name] is None:
                continue
            texts = field_texts(record, name)
            if not texts or all(not t.strip() for t in texts):
                return Drop(f"{name}_empty")
            if any(is_placeholder_only(t) for t in texts if t.strip()):
                return Drop(f"{name}_placeholder_only")
        return None
