"""TextNormaliser: NFC, invisible and control characters, whitespace, repeated characters."""

from __future__ import annotations

from kollm.data.records import Record, map_field
from kollm.data.steps.base import Drop, Step
from kollm.text.normalize import NormalizeOptions, normalize_text


class TextNormaliser(Step):
    name = "normalise"

    def __init__(self, fields: tuple[str, ...], options: NormalizeOptions | None = None) -> None:
        super().__init__()
        self.fields = fields
        self.options = options or NormalizeOptions()

    def _normalise(self, text: str) -> str:
        cleaned = normalize_text(text, self.options)
        if cleaned != text:
            self.stats.changes["texts_changed"] += 1
        return cleaned

    def process(self, record: Record) -> Drop | None:
        for name in self.fields:
            map_field(record, name, self._normalise)
        return None
