"""Following a growing log file: each read returns only what was appended since the last one.

The job executor's `follow` and the console's live job log poll a log that a running job keeps
appending to; reading the whole file on every poll costs time and memory in its size, so a
`LogTail` keeps its byte offset and decodes UTF-8 across reads (a character split between two
writes comes out whole on the later read). Polls have a floor (`MIN_POLL_S`): a caller asking
for 0 s gets a loop that sleeps, not one that spins.
"""

from __future__ import annotations

import codecs
from pathlib import Path

MIN_POLL_S = 0.2
CHUNK_BYTES = 1 << 20  # the most one read returns: a big log arrives in pieces, not at once


def poll_interval(poll_s: float) -> float:
    """`poll_s`, at least MIN_POLL_S (a NaN or negative request too)."""
    return poll_s if poll_s >= MIN_POLL_S else MIN_POLL_S


class LogTail:
    """What `path` gained since the previous `read()`; '' while it has not grown (or does not
    exist yet). The file is assumed append-only: one rewritten shorter waits until it grows
    past what was already read."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.offset = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def read(self, limit: int = CHUNK_BYTES) -> str:
        try:
            with self.path.open("rb") as log:
                log.seek(self.offset)
                data = log.read(limit)
        except (FileNotFoundError, IsADirectoryError):
            return ""
        self.offset += len(data)
        return self._decoder.decode(data)

    def read_all(self) -> str:
        """Everything appended since the last read, in CHUNK_BYTES pieces joined."""
        parts = []
        while part := self.read():
            parts.append(part)
        return "".join(parts)
