"""PiiMasker: personal information becomes typed placeholders (`#PhoneNumber#`)."""

from __future__ import annotations

from kollm.data.records import Record, map_field
from kollm.data.steps.base import Drop, Step
from kollm.text.pii import PiiOptions, mask_pii


class PiiMasker(Step):
    name = "pii"

    def __init__(self, fields: tuple[str, ...], options: PiiOptions | None = None) -> None:
        super().__init__()
        self.fields = fields
        self.options = options or PiiOptions()

    def _mask(self, text: str) -> str:
        result = mask_pii(text, self.options)
        self.stats.changes.update(result.counts)
        return result.text

    def process(self, record: Record) -> Drop | None:
        for name in self.fields:
            map_field(record, name, self._mask)
        return None
