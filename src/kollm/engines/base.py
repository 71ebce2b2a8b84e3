"""The engine protocol: load, generate a batch (or a stream), tokenize, unload."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class GenerationParams:
    max_new_tokens: int = 64
    num_beams: int = 1
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    no_repeat_ngram_size: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)


class Engine(Protocol):
    name: str

    def load(self) -> None: ...

    def generate(self, prompts: list[str], params: GenerationParams) -> list[str]:
        """One answer per prompt, prompts processed as one batch."""
        ...

    def stream(self, prompt: str, params: GenerationParams) -> Iterator[str]:
        """The answer to one prompt in pieces; the pieces join to `generate`'s answer."""
        ...

    def tokenize(self, text: str) -> list[int]: ...

    def unload(self) -> None: ...


def apply_stop(text: str, stop: list[str]) -> str:
    """Cut `text` at the first stop string."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=len(text))
    return text[:cut]
