"""Answers from documents: the collection a request names (`rag` beside the OpenAI fields) or
the one the server is bound to (`serve.rag`, `--rag`); the retrieved chunks go into the
context prompt (kollm.prompts.rag_messages) and come back as `citations`. Only retrieved
chunks can be cited: an answer's [n] markers that name no retrieved chunk are ignored, and an
answer with no valid marker cites every chunk it was given."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path

from kollm.config import RagConfig
from kollm.prompts import Messages, rag_messages
from kollm.rag.index import Hit
from kollm.rag.search import Retriever
from kollm.serve import protocol as p
from kollm.serve.errors import ApiError

_MARKER = re.compile(r"\[(\d{1,2})\]")


@dataclass
class Retrieved:
    collection: str
    hits: list[Hit]

    def messages(self, messages: Messages) -> Messages:
        return rag_messages(messages, [(h.doc_id, h.text) for h in self.hits])

    def citations(self, answer: str) -> list[p.Citation]:
        """The retrieved chunks the answer cites by [n]; all of them if it cites none."""
        marked = {int(m) for m in _MARKER.findall(answer) if 1 <= int(m) <= len(self.hits)}
        numbers = sorted(marked) or range(1, len(self.hits) + 1)
        return [_citation(n, self.hits[n - 1]) for n in numbers]

    def log(self, citations: list[p.Citation] | None) -> dict:
        """What the request log keeps: the collection, every chunk given, the ones cited (the
        answer's `citations`, as the response gave them: computed once)."""
        return {
            "collection": self.collection,
            "chunks": [h.chunk_id for h in self.hits],
            "cited": [c.chunk_id for c in citations or []],
        }


def _citation(n: int, hit: Hit) -> p.Citation:
    return p.Citation(
        index=n,
        chunk_id=hit.chunk_id,
        doc_id=hit.doc_id,
        source=hit.source,
        page=hit.page,
        section=hit.section,
        paragraph=hit.paragraph,
        start=hit.start,
        end=hit.end,
        score=hit.score,
    )


class RagService:
    def __init__(
        self, settings: RagConfig | None, bound: str | None, home: Path | str | None
    ) -> None:
        self.settings = settings or RagConfig()
        self.bound = bound  # the collection every chat request is answered from
        self.retriever = Retriever(self.settings, home)

    def collection_for(self, options: p.RagOptions | None) -> str | None:
        if options is not None and options.collection:
            return options.collection
        return self.bound

    async def retrieve(
        self, collection: str, question: str, options: p.RagOptions | None
    ) -> Retrieved:
        """The chunks for `question`; 404 naming `rag.collection` when it does not exist."""
        known = await asyncio.to_thread(self.retriever.index.collections)
        if collection not in known:
            raise ApiError(
                404, f"no document collection '{collection}'", "not_found_error", "rag.collection"
            )
        top_k = options.top_k if options is not None else None
        hits = await asyncio.to_thread(self.retriever.retrieve, collection, question, top_k)
        return Retrieved(collection, hits)
