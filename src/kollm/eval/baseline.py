"""Extractive lead baseline: the first N turns of a dialogue (or N sentences of a text).

A model that does not beat it has learnt little; the eval table shows both side by side.
"""

from __future__ import annotations

import re

_SENTENCE_END = re.compile(r"(?<=[.!?。])\s+")


def lead(text: str, n: int = 3) -> str:
    """First `n` turns when `text` has one per line, else its first `n` sentences."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > 1:
        return " ".join(lines[:n])
    return " ".join(_SENTENCE_END.split(text.strip())[:n])
