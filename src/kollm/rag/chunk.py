"""Korean sentence chunks: sentences (ending in 다/요/죠/까 or punctuation, or a line break)
packed up to a character budget, with one sentence of overlap; each chunk keeps its
character span in the section it came from."""

from __future__ import annotations

import re
from dataclasses import dataclass

# A sentence ends at . ! ? 。 (and Korean endings before them), or at a line break.
_SENTENCE_END = re.compile(r"(?<=[.!?。])\s+|\n+")


@dataclass(frozen=True)
class Chunk:
    text: str
    start: int
    end: int


def sentences(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence of `text`."""
    spans, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        if text[start : m.start()].strip():
            spans.append((start, m.start()))
        start = m.end()
    if text[start:].strip():
        spans.append((start, len(text)))
    return spans


DEFAULT_CHUNK_CHARS = 300  # three or four sentences of Korean prose


def chunk_text(text: str, max_chars: int = DEFAULT_CHUNK_CHARS, overlap: int = 1) -> list[Chunk]:
    """Sentences packed into chunks of at most `max_chars` (a longer sentence is its own
    chunk); the last `overlap` sentences of a chunk open the next."""
    spans = sentences(text)
    chunks: list[Chunk] = []
    i = 0
    while i < len(spans):
        j = i + 1
        while j < len(spans) and spans[j][1] - spans[i][0] <= max_chars:
            j += 1
        start, end = spans[i][0], spans[j - 1][1]
        chunks.append(Chunk(text[start:end].strip(), start, end))
        i = j if j >= len(spans) else max(j - overlap, i + 1)
    return chunks
