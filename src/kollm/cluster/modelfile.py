"""An Ollama Modelfile for a GGUF export: `FROM`, a `TEMPLATE` made from the tokenizer's chat
template, every stop token, and the recipe's decoding defaults.

Ollama's templates are Go templates; a Jinja chat template cannot be translated in general, so
it is measured instead: rendered (by the tokenizer, as in training and serving) over
conversations of marker strings, which gives each role's text before and after its content
and the generation prompt. The Go template rebuilds exactly that for any conversation. A
default system prompt (Qwen's "You are a helpful assistant.") becomes the Modelfile's
`SYSTEM`, which Ollama puts first when a request has none, as the Jinja template does."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MARK = {
    "system": "\u2063S\u2063",
    "user1": "\u2063U1\u2063",
    "assistant": "\u2063A1\u2063",
    "user2": "\u2063U2\u2063",
}  # invisible separators no template adds itself


class TemplateError(ValueError):
    """A chat template whose turns cannot be expressed as an Ollama template."""


@dataclass
class ChatShape:
    """Each role's text around its content, as the chat template renders it."""

    user: tuple[str, str]
    assistant: tuple[str, str]
    generation: str
    system: tuple[str, str] | None = None
    default_system: str | None = None
    bos: str = ""
    stops: list[str] = field(default_factory=list)


def _render(tokenizer, messages, generation: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)


def _split(text: str, mark: str, where: str) -> tuple[str, str]:
    if text.count(mark) != 1:
        raise TemplateError(f"the chat template does not render the {where} once as given")
    before, after = text.split(mark)
    return before, after


def chat_shape(tokenizer) -> ChatShape:
    """Measure the tokenizer's chat template (TemplateError when it has none, or its turns
    change with their position in a way a template of fixed role texts cannot follow)."""
    if not getattr(tokenizer, "chat_template", None):
        raise TemplateError("the tokenizer has no chat template: there is nothing to rebuild")
    u1 = [{"role": "user", "content": MARK["user1"]}]
    u1a = [*u1, {"role": "assistant", "content": MARK["assistant"]}]
    u1au2 = [*u1a, {"role": "user", "content": MARK["user2"]}]
    one, two, three = (_render(tokenizer, m, False) for m in (u1, u1a, u1au2))
    generation = _render(tokenizer, u1, True)[len(one) :]
    if not (two.startswith(one) and three.startswith(two)):
        raise TemplateError("the chat template re-renders earlier turns as the chat grows")
    a_pre, a_suf = _split(two[len(one) :], MARK["assistant"], "assistant turn")
    u_pre, u_suf = _split(three[len(two) :], MARK["user2"], "second user turn")
    head, tail = _split(one, MARK["user1"], "first user turn")
    if tail != u_suf or not head.endswith(u_pre):
        raise TemplateError("the first user turn is rendered unlike the later ones")
    head = head[: len(head) - len(u_pre)]
    bos = tokenizer.bos_token or ""
    bos = bos if bos and head.startswith(bos) else ""
    shape = ChatShape((u_pre, u_suf), (a_pre, a_suf), generation or a_pre, bos=bos)
    _system(tokenizer, shape, head[len(bos) :])
    shape.stops = stop_tokens(tokenizer, shape)
    return shape


def _system(tokenizer, shape: ChatShape, head: str) -> None:
    """The system turn's texts, and the default system prompt `head` holds (if any)."""
    try:
        rendered = _render(
            tokenizer,
            [
                {"role": "system", "content": MARK["system"]},
                {"role": "user", "content": MARK["user1"]},
            ],
            False,
        )
    except Exception:  # templates may raise on a role they do not take
        rendered = None
    if rendered is not None and MARK["system"] in rendered:
        before, after = _split(rendered[len(shape.bos) :], MARK["system"], "system turn")
        sys_suf = after.split(MARK["user1"])[0]
        if not sys_suf.endswith(shape.user[0]):
            raise TemplateError("the system turn is not followed by the user turn as usual")
        shape.system = (before, sys_suf[: len(sys_suf) - len(shape.user[0])])
    if not head:
        return
    pre, suf = shape.system or ("", "")
    if shape.system and head.startswith(pre) and head.endswith(suf):
        shape.default_system = head[len(pre) : len(head) - len(suf)]
    else:
        raise TemplateError(f"the chat template starts every chat with {head!r}, not a system turn")


def stop_tokens(tokenizer, shape: ChatShape) -> list[str]:
    """EOS and every special token that closes a turn in the template."""
    stops = []
    specials = set(tokenizer.all_special_tokens) | set(
        getattr(tokenizer, "added_tokens_encoder", {}) or {}
    )
    for token in [tokenizer.eos_token, *sorted(specials)]:
        closes = any(token and token in s for s in (shape.user[1], shape.assistant[1]))
        if token and (token == tokenizer.eos_token or closes) and token not in stops:
            stops.append(token)
    return stops


def go_template(shape: ChatShape) -> str:
    """The Go template of `shape` over Ollama's `.Messages`, ending in the generation prompt.
    No trim markers: every character of the role texts is kept as measured."""

    def lit(text: str) -> str:
        if "{{" in text or '"""' in text:
            raise TemplateError(f"a role text holds '{{{{' or '\"\"\"': {text!r}")
        return text

    branches = []
    if shape.system:
        branches.append(
            f'if eq .Role "system" }}}}{lit(shape.system[0])}{{{{ .Content }}}}'
            f"{lit(shape.system[1])}"
        )
    branches.append(
        f'if eq .Role "user" }}}}{lit(shape.user[0])}{{{{ .Content }}}}{lit(shape.user[1])}'
    )
    branches.append(
        f'if eq .Role "assistant" }}}}{lit(shape.assistant[0])}{{{{ .Content }}}}'
        f"{lit(shape.assistant[1])}"
    )
    body = "{{ " + "{{ else ".join(branches) + "{{ end }}"
    return "{{ range .Messages }}" + body + "{{ end }}" + lit(shape.generation)


def _quote(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def modelfile(gguf_name: str, shape: ChatShape, params: dict[str, Any]) -> str:
    """The Modelfile text: FROM the GGUF beside it, TEMPLATE, SYSTEM, stops, parameters."""
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{go_template(shape)}"""']
    if shape.default_system is not None:
        lines.append(f'SYSTEM """{shape.default_system}"""')
    lines += [f"PARAMETER stop {_quote(s)}" for s in shape.stops]
    lines += [f"PARAMETER {k} {v}" for k, v in params.items()]
    return "\n".join(lines) + "\n"


def recipe_params(recipe_text: str | None, context: int | None) -> dict[str, Any]:
    """Ollama's defaults from the recipe the version was trained with: eval decoding's
    temperature, top_p, repetition penalty and answer length, and the context length."""
    import yaml

    raw = yaml.safe_load(recipe_text or "") or {}
    decoding = (raw.get("eval") or {}).get("decoding") or {}
    params: dict[str, Any] = {}
    if decoding.get("do_sample"):
        params["temperature"] = decoding.get("temperature", 1.0)
        params["top_p"] = decoding.get("top_p", 1.0)
    else:
        params["temperature"] = 0  # the recipe evaluates greedy decoding
    if decoding.get("repetition_penalty", 1.0) != 1.0:
        params["repeat_penalty"] = decoding["repetition_penalty"]
    params["num_predict"] = decoding.get("max_new_tokens", 128)
    if context:
        params["num_ctx"] = context
    return params


def write_modelfile(out: Path, gguf: Path, tokenizer, params: dict[str, Any]) -> Path:
    from kollm.data.io import write_text

    path = out / f"{gguf.stem}.Modelfile"  # one per GGUF: `ollama create NAME -f` it
    write_text(path, modelfile(gguf.name, chat_shape(tokenizer), params))
    return path
