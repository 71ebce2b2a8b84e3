"""What the vLLM and llama-server engines share: reading their SSE streams."""

from __future__ import annotations

import json

from kollm.engines.upstream import sse_events


class _Reply:
    def __init__(self, body: bytes, size: int) -> None:
        self.body, self.size = body, size

    def iter_bytes(self):
        for i in range(0, len(self.body), self.size):
            yield self.body[i : i + self.size]


def test_an_answer_holding_unicode_line_separators_is_read_whole():
    """JSON leaves U+2028, U+2029 and U+0085 unescaped in a string; httpx's iter_lines cut
    the event there (seen as a 500 on fuzzed requests to llama-server)."""
    texts = ["첫 줄\u2028둘째 줄", "a\x85b\u2029c", "끝"]
    body = b"".join(
        b"data: " + json.dumps({"content": t}, ensure_ascii=False).encode() + b"\r\n\r\n"
        for t in texts
    )
    body += b': a comment\n\ndata: [DONE]\n\ndata: {"after": 1}\n\n'
    for size in (1, 3, 7, len(body)):  # blocks cut anywhere, inside a Hangul syllable too
        assert [e["content"] for e in sse_events(_Reply(body, size))] == texts
