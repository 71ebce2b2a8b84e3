"""Task services: a named prompt with its decoding settings, served as `MODEL/TASK` (or a chat
request's `task` field) and listed in `/v1/models`.

The shipped tasks are below; a recipe's `serve.tasks` adds its own or replaces one by name.
A version registered from a recipe keeps that recipe's text, so a served version keeps the
tasks it was registered with: the server offers the shipped tasks, then the version's, then
the serving recipe's (a later one replaces an earlier one of the same name).
"""

from __future__ import annotations

import logging
from typing import Any

import yaml
from pydantic import ValidationError

from kollm.config import TaskConfig

log = logging.getLogger("kollm.tasks")

Messages = list[dict[str, str]]

SHIPPED: dict[str, TaskConfig] = {
    "summarise": TaskConfig(
        description="글이나 대화를 요약합니다",
        system="당신은 긴 글을 핵심만 간결하게 요약하는 도우미입니다. 없는 내용은 덧붙이지 마세요.",
        template="다음 글을 요약하세요:\n\n{input}",
        temperature=0,
        max_tokens=256,
    ),
    "translate": TaskConfig(
        description="한국어와 영어 사이를 번역합니다",
        system=(
            "당신은 번역가입니다. 한국어는 자연스러운 영어로, 다른 언어는 자연스러운 한국어로 "
            "번역하고, 번역문만 답하세요."
        ),
        template="다음 글을 번역하세요:\n\n{input}",
        temperature=0,
        max_tokens=512,
    ),
    "qa": TaskConfig(
        description="색인된 문서를 근거로 질문에 답합니다",
        system="당신은 제공된 자료만 근거로 정확하게 답하는 상담원입니다.",
        temperature=0,
        max_tokens=256,
        retrieval=True,
    ),
    "interview_questions": TaskConfig(
        description="직무나 지원서에 맞는 면접 질문을 만듭니다",
        system=(
            "당신은 채용 면접관입니다. 주어진 직무와 자료에 맞는 면접 질문을 번호를 붙여 "
            "만드세요. 개인의 나이, 성별, 가족, 출신 등 차별이 될 수 있는 질문은 하지 마세요."
        ),
        template="다음 내용에 맞는 면접 질문 5개를 만드세요:\n\n{input}",
        temperature=0.7,
        top_p=0.9,
        max_tokens=384,
    ),
    "code": TaskConfig(
        description="요청에 맞는 코드를 작성합니다",
        system=(
            "당신은 숙련된 프로그래머입니다. 요청에 맞는 코드를 코드 블록으로 작성하고, "
            "필요한 설명은 한국어로 짧게 덧붙이세요."
        ),
        temperature=0.2,
        max_tokens=512,
    ),
}


def recorded_tasks(recipe_text: str | None) -> dict[str, TaskConfig]:
    """The `serve.tasks` of a version's recorded recipe; none when it has none or cannot be
    read (a recipe of another kollm release: logged, the version is still served)."""
    if not recipe_text:
        return {}
    try:
        raw = yaml.safe_load(recipe_text) or {}
        tasks = ((raw.get("serve") or {}).get("tasks")) or {}
        return {str(name): TaskConfig.model_validate(t) for name, t in tasks.items()}
    except (yaml.YAMLError, AttributeError, ValidationError) as err:
        log.warning("the version's recorded serve.tasks are left out: %s", err)
        return {}


def task_layers(*layers: dict[str, TaskConfig]) -> dict[str, TaskConfig]:
    """The shipped tasks, then each layer's, a later one replacing an earlier by name."""
    merged = dict(SHIPPED)
    for layer in layers:
        merged.update(layer)
    return merged


def task_messages(task: TaskConfig, messages: Messages) -> Messages:
    """The conversation a task sends the model: its system prompt first (before the request's
    own, in one system turn) and the last user turn put in its template."""
    out = [dict(m) for m in messages]
    users = [i for i, m in enumerate(out) if m.get("role") == "user"]
    if users:
        last = out[users[-1]]
        last["content"] = task.template.format(input=last["content"])
    if not task.system:
        return out
    if out and out[0].get("role") == "system":
        out[0]["content"] = f"{task.system}\n\n{out[0]['content']}"
        return out
    return [{"role": "system", "content": task.system}, *out]


DECODING = ("temperature", "top_p", "repetition_penalty")


def decoding_defaults(task: TaskConfig, given: set[str]) -> dict[str, Any]:
    """The task's decoding settings the request left unset (`given`: the fields it set)."""
    out = {f: getattr(task, f) for f in DECODING if getattr(task, f) is not None}
    if task.max_tokens is not None:
        out["max_tokens"] = task.max_tokens
    if given & {"max_tokens", "max_completion_tokens"}:
        out.pop("max_tokens", None)
    return {k: v for k, v in out.items() if k not in given}
