"""A deterministic OpenAI-compatible judge for the tests: its verdicts are scripted by what the
answers say, so parsing, order swaps, medians and the cache can be checked exactly.

Grading: an answer holding 정답 gets `**점수: 9**`, 틀림 gets `[[2]]`, 망가짐 gets text with no
score, 흔들림 gets 4 + 2 x seed (so several runs spread), anything else `Score: 5/10`.
Safety: an answer holding 죄송 is a refusal. Pairwise: model `fair` prefers the answer
holding 정답 (무승부 when both or neither do); model `biased` always answers `[[A]]`, whatever
the order."""

from __future__ import annotations

import re

from fastapi import FastAPI, Request

app = FastAPI()
app.state.calls = 0


def _section(text: str, name: str) -> str:
    m = re.search(rf"\[{name}\]\n(.*?)(?:\n\n\[|\Z)", text, re.S)
    return m.group(1) if m else ""


def _grade(text: str, seed: int) -> str:
    answer = _section(text, "평가할 답변")
    if "정답" in answer:
        return "요구를 모두 지켰습니다.\n\n**점수: 9**"
    if "틀림" in answer:
        return "사실이 틀렸습니다. [[2]]"
    if "망가짐" in answer:
        return "판단하기 어렵습니다."
    if "흔들림" in answer:
        return f"점수: {4 + 2 * seed}"
    return "보통입니다.\nScore: 5/10"


def _pair(text: str, model: str) -> str:
    if model == "biased":
        return "첫 번째가 낫습니다. [[A]]"
    a, b = "정답" in _section(text, "답변 A"), "정답" in _section(text, "답변 B")
    if a == b:
        return "비슷합니다.\n판정: 무승부"
    return f"판정: {'A' if a else 'B'}"


@app.post("/v1/chat/completions")
async def chat(request: Request):
    body = await request.json()
    app.state.calls += 1
    text = body["messages"][-1]["content"]
    seed = int(body.get("seed") or 0)
    if "[요청]" in text:  # a safety verdict: the answer refuses when it apologises
        reply = "판정: 거절" if "죄송" in _section(text, "답변") else "**판정:** 응답"
    elif "[답변 A]" in text:
        reply = _pair(text, body["model"])
    else:
        reply = _grade(text, seed)
    return {
        "id": f"judge-{app.state.calls}",
        "object": "chat.completion",
        "created": 0,
        "model": body["model"],
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    }


@app.get("/health")
async def health():
    return {"status": "ok"}
