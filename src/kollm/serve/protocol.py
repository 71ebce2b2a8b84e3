"""OpenAI-compatible request and response schemas, fields in OpenAI's order.

Unknown request fields are accepted and ignored (OpenAI clients send many); the app logs them.
Every response adds `model_version` (`NAME:VERSION` in the registry, or the served dir) beside
OpenAI's fields.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_STOPS = 4
MAX_STOP_CHARS = 1024
"""Stop strings a request may give, and the longest one (OpenAI takes 4; a stop string is
checked against the answer's tail at every token, in the engine thread all clients share)."""


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")

    def unknown_fields(self) -> list[str]:
        return sorted(self.model_extra or {})


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.get("text", "") for part in self.content if part.get("type") == "text")


class _Sampling(_Request):
    max_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1, le=1)
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)  # OpenAI's int64
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, bool] | None = None
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _at_most_four(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop sequences")
        for i, stop in enumerate([value] if isinstance(value, str) else value or []):
            if len(stop) > MAX_STOP_CHARS:
                where = "" if isinstance(value, str) else f" {i}"
                raise ValueError(
                    f"stop sequence{where} has {len(stop)} characters; at most "
                    f"{MAX_STOP_CHARS} are taken"
                )
        return value

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.get("include_usage"))

    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class RagOptions(BaseModel):
    """kollm's extension beside the OpenAI fields: answer from a document collection."""

    model_config = ConfigDict(extra="forbid")
    collection: str | None = Field(None, min_length=1)
    top_k: int | None = Field(None, ge=1, le=50)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    model: str
    max_completion_tokens: int | None = Field(None, ge=1)
    rag: RagOptions | None = None


class CompletionRequest(_Sampling):
    model: str
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=20)
    max_tokens: int | None = Field(None, ge=0)

    @field_validator("prompt")
    @classmethod
    def _some_prompt(cls, value):
        if isinstance(value, list) and (not value or any(v == [] or v == "" for v in value)):
            raise ValueError("a prompt (text or token ids) is needed")
        return value

    @model_validator(mode="after")
    def _scoring_rules(self):
        if self.stream and len(self.prompts()) > 1:
            raise ValueError("prompt: a streamed completion takes one prompt")
        if self.max_tokens == 0 and not self.echo:
            raise ValueError("max_tokens: 0 generates nothing; it needs echo: true")
        if self.stream and (self.echo or self.logprobs is not None):
            raise ValueError("logprobs: echo and logprobs are not streamed; set stream: false")
        return self

    def prompts(self) -> list[str | list[int]]:
        """Each prompt of the request: a text, or a list of token ids."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        if all(isinstance(v, int) for v in self.prompt):
            return [list(self.prompt)]
        return list(self.prompt)

    def prompt_text(self) -> str:
        first = self.prompts()[0]
        return first if isinstance(first, str) else ""


def bad_token_id(ids: list[int], vocab_size: int) -> str | None:
    """What is wrong with the first id of `ids` outside 0 .. vocab_size - 1, or None. The
    bounds are checked at C speed first: a body holds up to millions of ids."""
    if not ids or (min(ids) >= 0 and max(ids) < vocab_size):
        return None
    at = next(i for i, t in enumerate(ids) if not 0 <= t < vocab_size)
    return (
        f"token id {ids[at]} at position {at} is not in the model's vocabulary "
        f"(ids 0 to {vocab_size - 1})"
    )


class TokenizeRequest(BaseModel):
    """vLLM's /tokenize body: a `prompt`, or chat `messages` (the prompt the server builds)."""

    model_config = ConfigDict(extra="forbid")
    model: str
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True
    return_token_strs: bool = False

    @model_validator(mode="after")
    def _one_input(self):
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("prompt: give a prompt or messages (one of them)")
        return self


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    tokens: list[int]


class DetokenizeResponse(BaseModel):
    prompt: str


class EmbeddingRequest(_Request):
    input: str | list[str]
    model: str
    encoding_format: Literal["float", "base64"] = "float"

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class LoadLoraAdapterRequest(BaseModel):
    """vLLM's runtime adapter loading body; `base_model` picks the base when several are served."""

    model_config = ConfigDict(extra="forbid")

    lora_name: str = Field(min_length=1, pattern=r"^[\w.@:-]+$")
    lora_path: str = Field(min_length=1)
    base_model: str | None = None


class UnloadLoraAdapterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lora_name: str = Field(min_length=1)
    base_model: str | None = None


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    response_id: str
    rating: str | int
    categories: list[str] = Field(default_factory=list)
    comment: str | None = Field(None, max_length=4_000)
    correction: str | None = Field(None, max_length=16_000)  # an answer, rewritten


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int


def new_id(prefix: str) -> str:
    """A fresh response id with OpenAI's prefix (`chatcmpl-...`)."""
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    """Seconds since the epoch, as OpenAI's `created`."""
    return int(time.time())


class ChatChoice(BaseModel):
    index: int = 0
    message: dict[str, str]
    finish_reason: str


class Citation(BaseModel):
    """A retrieved chunk an answer rests on; `index` is its [n] in the context prompt."""

    index: int
    chunk_id: int
    doc_id: str
    source: str
    page: int | None = None
    # an HWP or HWPX file's section and paragraph (numbered from 1) the chunk opens in
    section: int | None = None
    paragraph: int | None = None
    start: int
    end: int
    score: float


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    model_version: str
    citations: list[Citation] | None = None  # with `rag`: the chunks the answer rests on


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: dict[str, str]
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    model_version: str
    citations: list[Citation] | None = None  # with `rag`: on the last chunk of the stream


class CompletionLogprobs(BaseModel):
    """OpenAI's legacy completion logprobs: one entry per token (with `echo`, the prompt's
    first; its logprob is null, as nothing comes before it)."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None] | None = None
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    model_version: str


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "kollm"
    model_version: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    embedding: list[float] | str  # base64 of little-endian float32 when asked for
    index: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage
    model_version: str


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
