"""OpenAI-compatible request and response schemas, fields in OpenAI's order.

Unknown request fields are accepted and logged (clients send many of their own); the OpenAI and
vLLM fields that would change the answer and that kollm does not honour (UNSUPPORTED) are
refused with a 400 naming the field, and a sampling setting the model's engine does not honour
is refused the same way, naming the engines that do.
Every response adds `model_version` (`NAME:VERSION` in the registry, or the served dir) beside
OpenAI's fields.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

MAX_STOPS = 4
MAX_STOP_CHARS = 1024
"""Stop strings a request may give, and the longest one (OpenAI takes 4; a stop string is
checked against the answer's tail at every token, in the engine thread all clients share)."""


MAX_N = 16  # choices a request may ask for (each is a sequence the engine runs)
MAX_LOGIT_BIAS = 300  # entries a request's logit_bias may hold (OpenAI's limit)

_OFF = (None, False, "", [], {}, "none", "auto")
_VLLM = "vLLM's {} is not supported by kollm"


def _vllm(name: str, *off, why: str | None = None) -> tuple[str, tuple]:
    """A vLLM extension kollm refuses unless it has one of its `off` values (the default,
    which leaves the answer as it is)."""
    return (why or _VLLM.format(name), tuple(off) or _OFF)


UNSUPPORTED: dict[str, tuple[str, tuple]] = {
    "functions": ("the legacy functions field is not supported; use tools", _OFF),
    "function_call": ("the legacy function_call field is not supported; use tool_choice", _OFF),
    "audio": ("audio output is not supported", _OFF),
    "prediction": ("predicted outputs are not supported", _OFF),
    "web_search_options": (
        "web search is not supported: kollm answers from its own documents (the rag field)",
        _OFF,
    ),
    "best_of": ("best_of is not supported; use n", (*_OFF, 1)),
    "suffix": ("suffix (fill in the middle) is not supported", _OFF),
    "guided_json": ("use response_format (json_schema)", _OFF),
    "guided_regex": ("guided decoding by regex is not supported", _OFF),
    "guided_choice": ("guided decoding by choice is not supported", _OFF),
    "guided_grammar": ("guided decoding by grammar is not supported", _OFF),
    "structured_outputs": _vllm("structured_outputs", why="use response_format (json_schema)"),
    "include_stop_str_in_output": _vllm("include_stop_str_in_output"),
    "ignore_eos": _vllm("ignore_eos"),
    "min_tokens": _vllm("min_tokens", None, 0),
    "skip_special_tokens": _vllm("skip_special_tokens", None, True),
    "spaces_between_special_tokens": _vllm("spaces_between_special_tokens", None, True),
    "truncate_prompt_tokens": _vllm("truncate_prompt_tokens", None),
    "prompt_logprobs": _vllm(
        "prompt_logprobs", None, why="use /v1/completions with echo and logprobs"
    ),
    "logprob_token_ids": _vllm("logprob_token_ids"),
    "allowed_token_ids": _vllm("allowed_token_ids"),
    "bad_words": _vllm("bad_words"),
    "use_beam_search": _vllm("use_beam_search"),
    "length_penalty": _vllm("length_penalty", None, 1, 1.0),
    "return_tokens_as_token_ids": _vllm("return_tokens_as_token_ids"),
    "priority": _vllm("priority", None, 0),
    "vllm_xargs": _vllm("vllm_xargs"),
    "thinking_token_budget": _vllm("thinking_token_budget", None),
    "repetition_detection": _vllm("repetition_detection"),
}
"""OpenAI (and vLLM) request fields that would change the answer and that kollm does not
honour, each with why and the values that leave the answer as it is (null, false or empty for
most; vLLM's default where it is true or a number): a request that sets one otherwise gets a
400 naming it rather than an answer that ignored it."""

CHAT_UNSUPPORTED: dict[str, tuple[str, tuple]] = {
    "add_special_tokens": _vllm("add_special_tokens", None, False),
    "echo": _vllm("echo (on chat)", why="echo is a /v1/completions field"),
    "add_generation_prompt": _vllm("add_generation_prompt", None, True),
    "continue_final_message": _vllm("continue_final_message"),
    "chat_template": _vllm("chat_template", why="a request cannot bring its own chat template"),
    "documents": _vllm("documents", why="use the rag field"),
    "reasoning_effort": _vllm("reasoning_effort", None),
    "include_reasoning": _vllm("include_reasoning", None, True),
}
COMPLETION_UNSUPPORTED: dict[str, tuple[str, tuple]] = {
    "add_special_tokens": _vllm("add_special_tokens", None, True),
    "prompt_embeds": _vllm("prompt_embeds"),
}


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")

    def unknown_fields(self) -> list[str]:
        return sorted(self.model_extra or {})


def _refusing(name: str, base: type[BaseModel], fields: dict[str, tuple[str, tuple]]):
    """`base` with `fields` declared, each refused by name (400) when set to a value that
    would change the answer."""

    def refuse(value: Any, info: ValidationInfo) -> Any:
        why, off = fields[info.field_name]
        if not any((value == o and type(value) is not bool) or value is o for o in off):
            raise PydanticCustomError("unsupported", why)
        return value

    return create_model(
        name,
        __base__=base,
        __validators__={f"_refuse_{name}": field_validator(*fields)(refuse)},  # one a model
        **{field: (Any, None) for field in fields},
    )


_Refusing = _refusing("_Refusing", _Request, UNSUPPORTED)


class FunctionCall(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    arguments: str  # a JSON object's text


class ToolCallItem(BaseModel):
    id: str = Field(min_length=1, max_length=128)
    type: Literal["function"] = "function"
    function: FunctionCall

    def for_template(self) -> dict[str, Any]:
        """The call as chat templates read it: arguments as an object."""
        try:
            arguments = json.loads(self.function.arguments)
        except ValueError:
            arguments = self.function.arguments
        function = {"name": self.function.name, "arguments": arguments}
        return {"id": self.id, "type": "function", "function": function}


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = Field(None, max_length=64)
    tool_calls: list[ToolCallItem] | None = None
    tool_call_id: str | None = Field(None, max_length=128)

    @field_validator("content")
    @classmethod
    def _text_parts(cls, value):
        for i, part in enumerate(value if isinstance(value, list) else []):
            kind = part.get("type")
            if kind != "text" or not isinstance(part.get("text"), str):
                raise ValueError(
                    f"part {i} is of type {str(kind)[:40]!r}: kollm serves text models, and "
                    "takes text parts only ({'type': 'text', 'text': ...})"
                )
        return value

    @model_validator(mode="after")
    def _has_content(self):
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("content is needed (an assistant turn with tool_calls may omit it)")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("tool_calls belong to an assistant turn")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.get("text", "") for part in self.content if part.get("type") == "text")


class ToolFunction(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    description: str | None = Field(None, max_length=8192)
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: ToolFunction


class NamedFunction(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str = Field("answer", max_length=64)
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """OpenAI's response_format: text, any JSON object, or JSON valid under a schema; the
    JSON kinds are enforced by constrained decoding on the engines that can."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_compiles(self):
        from kollm.engines.structured import SchemaError, check_schema

        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is given with type json_schema, and only then")
        if self.json_schema is not None:
            try:
                check_schema(self.json_schema.schema_)
            except SchemaError as err:
                raise ValueError(f"json_schema.schema cannot be enforced: {err}") from None
        return self

    def schema_json(self) -> str | None:
        """The JSON schema the answer must satisfy, as canonical text (None: free text)."""
        if self.type == "text":
            return None
        schema = {"type": "object"} if self.json_schema is None else self.json_schema.schema_
        return json.dumps(schema, sort_keys=True, ensure_ascii=False)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool | None = None
    continuous_usage_stats: bool | None = None  # vLLM's: usage on every chunk

    @field_validator("continuous_usage_stats")
    @classmethod
    def _not_continuous(cls, value: bool | None) -> bool | None:
        if value:
            raise PydanticCustomError(
                "unsupported", "vLLM's continuous_usage_stats is not supported; use include_usage"
            )
        return value


class _Sampling(_Refusing):
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    max_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1, le=MAX_N)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    response_format: ResponseFormat | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)  # OpenAI's int64
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    user: str | None = None
    # vLLM's sampling extensions, beside OpenAI's
    top_k: int | None = Field(None, ge=-1)
    min_p: float = Field(0.0, ge=0, le=1)
    repetition_penalty: float = Field(1.0, ge=0.01, le=10)  # llama.cpp: > 0 as a float32
    stop_token_ids: list[int] | None = Field(None, max_length=64)  # the model's own end ids

    @field_validator("logit_bias")
    @classmethod
    def _token_biases(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value and len(value) > MAX_LOGIT_BIAS:
            raise ValueError(f"at most {MAX_LOGIT_BIAS} tokens may be biased")
        for key, bias in (value or {}).items():
            if not key.strip().lstrip("-").isdigit():
                raise ValueError(f"keys are token ids; '{key[:40]}' is not one")
            if not -100 <= bias <= 100:
                raise ValueError(f"token {key}: a bias is between -100 and 100, not {bias}")
        return value

    def token_biases(self) -> tuple[tuple[int, float], ...]:
        """logit_bias as (token id, bias) pairs, in id order."""
        return tuple(sorted((int(k), float(v)) for k, v in (self.logit_bias or {}).items()))

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

    @field_validator("stream_options")
    @classmethod
    def _streamed(cls, value: StreamOptions | None, info: ValidationInfo):
        if value is not None and not info.data.get("stream"):  # OpenAI's and vLLM's 400
            raise ValueError("stream_options is only allowed when stream is true")
        return value

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class RagOptions(BaseModel):
    """kollm's extension beside the OpenAI fields: answer from a document collection."""

    model_config = ConfigDict(extra="forbid")
    collection: str | None = Field(None, min_length=1)
    top_k: int | None = Field(None, ge=1, le=50)


_ChatSampling = _refusing("_ChatSampling", _Sampling, CHAT_UNSUPPORTED)
_CompletionSampling = _refusing("_CompletionSampling", _Sampling, COMPLETION_UNSUPPORTED)


# apply_chat_template's own arguments: the server sets them
_TEMPLATE_ARGUMENTS = {
    "conversation",
    "messages",
    "tools",
    "documents",
    "chat_template",
    "add_generation_prompt",
    "continue_final_message",
    "tokenize",
    "padding",
    "truncation",
    "max_length",
    "return_tensors",
    "return_dict",
    "return_assistant_tokens_mask",
    "tokenizer_kwargs",
}


class ChatCompletionRequest(_ChatSampling):
    messages: list[ChatMessage] = Field(min_length=1)
    model: str
    logprobs: bool = False
    max_completion_tokens: int | None = Field(None, ge=1)
    parallel_tool_calls: bool = True
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[Tool] | None = Field(None, max_length=128)  # before tool_choice, checked by it
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    # vLLM's: the chat template's own variables (Qwen3's enable_thinking)
    chat_template_kwargs: dict[str, Any] | None = None
    rag: RagOptions | None = None
    task: str | None = None  # kollm's: a task service of the model (as `MODEL/TASK` names it)

    @field_validator("tool_choice")
    @classmethod
    def _names_a_tool(cls, choice, info: ValidationInfo):
        names = [t.function.name for t in info.data.get("tools") or []]
        if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
            raise PydanticCustomError(
                "unknown_tool", f"'{choice.function.name}' is not one of the request's tools"
            )
        if choice == "required" and not names:
            raise PydanticCustomError("no_tools", "'required' needs tools")
        return choice

    def tools_on(self) -> bool:
        """Whether the answer may call a tool."""
        return bool(self.tools) and self.tool_choice != "none"

    def forced_tools(self) -> list[Tool] | None:
        """The tools one of which must be called (tool_choice required or named), else None."""
        if not self.tools_on() or self.tool_choice in (None, "auto"):
            return None
        if self.tool_choice == "required":
            return list(self.tools)
        return [t for t in self.tools if t.function.name == self.tool_choice.function.name]

    @field_validator("chat_template_kwargs")
    @classmethod
    def _template_variables(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        taken = sorted(set(value or {}) & _TEMPLATE_ARGUMENTS)
        if taken:
            raise ValueError(f"{taken[0]} is set by the server, not by chat_template_kwargs")
        return value

    @field_validator("top_logprobs")
    @classmethod
    def _with_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value and not info.data.get("logprobs"):  # OpenAI's rule: 400 rather than ignored
            raise ValueError("top_logprobs needs logprobs: true")
        return value


class CompletionRequest(_CompletionSampling):
    model: str
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=20)
    max_tokens: int | None = Field(None, ge=0)
    task: str | None = None  # refused: task services are chat (400 naming it, not ignored)

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


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None  # the token's text in UTF-8


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatLogprobs(BaseModel):
    """OpenAI's chat logprobs: an entry per token of the answer."""

    content: list[ChatTokenLogprob] | None = None
    refusal: list[ChatTokenLogprob] | None = None


class ChatChoice(BaseModel):
    index: int = 0
    message: dict[str, Any]
    logprobs: ChatLogprobs | None = None
    finish_reason: str
    # kollm's: with serve.unconstrained_json, whether the answer is valid under the schema
    schema_valid: bool | None = Field(None, exclude_if=lambda v: v is None)


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
    task: str | None = None  # kollm's: the task service that answered


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: dict[str, Any]
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None
    # kollm's: with serve.unconstrained_json, whether the answer is valid under the schema
    schema_valid: bool | None = Field(None, exclude_if=lambda v: v is None)


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
    # kollm's: with serve.unconstrained_json, whether the answer is valid under the schema
    schema_valid: bool | None = Field(None, exclude_if=lambda v: v is None)


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
    root: str | None = None  # vLLM's: the base an id serves
    parent: str | None = None  # vLLM's: the base an adapter sits on (None: a base)
    max_model_len: int | None = None  # vLLM's: the context in tokens
    model_version: str
    task: str | None = None  # kollm's: the task service `MODEL/TASK` names
    description: str | None = None  # what the task does


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
