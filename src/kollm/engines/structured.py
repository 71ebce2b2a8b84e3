"""Structured output for the transformers engine: a JSON schema enforced by constrained
decoding with llguidance (the grammar engine behind Guidance, also a backend of vLLM and
llama.cpp). It is chosen over xgrammar and outlines-core because it needs no precompilation
per schema (a schema costs milliseconds, so every request may bring its own), supports the
JSON Schema keywords forms use (enum, arrays with item limits, string lengths, integer ranges)
and ships a wheel with no dependencies.

At each step the tokens that cannot continue an answer valid under the schema are masked out
of the logits; once the answer is complete only the end token is left."""

from __future__ import annotations

import json
import threading
from typing import Any

_TOKENIZERS: dict[int, Any] = {}
# compact JSON: a model free to add whitespace may pad an answer with it up to max_tokens
_OPTIONS = {"whitespace_flexible": False}
_LOCK = threading.Lock()


class SchemaError(ValueError):
    """A response_format schema llguidance cannot compile; the message says why."""


def _ll_tokenizer(tokenizer) -> Any:
    """llguidance's view of a Hugging Face tokenizer, made once per tokenizer (it walks the
    whole vocabulary)."""
    import llguidance.hf

    with _LOCK:
        key = id(tokenizer)
        if key not in _TOKENIZERS:
            _TOKENIZERS[key] = llguidance.hf.from_tokenizer(tokenizer)
        return _TOKENIZERS[key]


def check_schema(schema: dict) -> str:
    """The schema as canonical JSON text once llguidance can compile it; SchemaError (naming
    the keyword or the place) otherwise, so a request learns it before any generation."""
    import llguidance

    text = json.dumps(schema, sort_keys=True, ensure_ascii=False)
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(text, defaults=_OPTIONS)
    except ValueError as err:
        raise SchemaError(str(err)) from None
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        raise SchemaError(messages[0])
    return text


def valid_json(text: str, schema_json: str) -> bool:
    """Whether `text` is JSON valid under the schema (an answer made without constraint)."""
    import jsonschema

    try:
        jsonschema.validate(json.loads(text), json.loads(schema_json))
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


def grammar_for(schema_json: str, tokenizer) -> str:
    """The llguidance grammar of a JSON schema; SchemaError naming what is wrong."""
    import llguidance

    grammar = llguidance.LLMatcher.grammar_from_json_schema(schema_json, defaults=_OPTIONS)
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(
        grammar, _ll_tokenizer(tokenizer)
    )
    if is_error:
        raise SchemaError(f"response_format: the JSON schema cannot be used: {messages[0]}")
    return grammar


class JsonSchemaProcessor:
    """A transformers logits processor keeping each row of a batch inside the grammar:
    one matcher a row, fed the token the row took at the step before."""

    def __init__(self, grammar: str, tokenizer, batch: int, prompt_length: int) -> None:
        import llguidance
        import llguidance.torch

        ll = _ll_tokenizer(tokenizer)
        self.matchers = [llguidance.LLMatcher(ll, grammar) for _ in range(batch)]
        self.bitmask = llguidance.torch.allocate_token_bitmask(batch, ll.vocab_size)
        self.vocab_size = ll.vocab_size
        self.prompt_length = prompt_length

    def __call__(self, input_ids, scores):
        from llguidance.torch import apply_token_bitmask_inplace, fill_next_token_bitmask

        if input_ids.shape[1] > self.prompt_length:  # the tokens chosen at the last step
            for matcher, token in zip(self.matchers, input_ids[:, -1].tolist(), strict=True):
                if not matcher.is_stopped():
                    matcher.consume_token(token)
        for row, matcher in enumerate(self.matchers):
            fill_next_token_bitmask(matcher, self.bitmask, row)
        # the model's head may be wider than the tokenizer: those ids are never allowed
        scores[:, self.vocab_size :] = float("-inf")
        apply_token_bitmask_inplace(scores[:, : self.vocab_size], self.bitmask.to(scores.device))
        return scores
