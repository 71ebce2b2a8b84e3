"""A deterministic OpenAI-compatible endpoint for the synthesis tests; what it answers follows
from the prompt, so every step can be checked exactly. `GET /calls` counts the chat requests
it received (the resume test counts repeats). Run alone: `python fake_endpoint.py PORT
LATENCY_S`.

- translate: `[ko] ` + the text (a text holding LOSE comes back without its first ⟦0⟧);
- back-translate: to English `EN<<text>>`, back to Korean the inside with 은 -> 는;
- answers (the assistant prompt): seed 0 gives `정답 답변: <question>`, others `모르겠어요 <seed>`,
  and model `weak` always `모르겠어요`;
- self-instruct: five numbered instructions, two of them near-copies;
- evolve: `(심화) ` + the instruction; doc_qa: a JSON question and answer from the text;
- the judge's pairwise prompt: prefers the answer holding 정답."""

from __future__ import annotations

import asyncio
import json
import re
import sys

from fastapi import FastAPI, Request

app = FastAPI()
app.state.calls = 0
app.state.latency = 0.0

NEW_INSTRUCTIONS = [
    "다음 문장을 존댓말로 바꾸세요.",
    "다음 문장을 존댓말로 바꿔 주세요.",
    "서울의 관광지를 세 곳 추천하세요.",
    "서울의 관광지를 세 곳 추천해 주세요.",
    "사과와 배의 차이를 설명하세요.",
]


def _section(text: str, name: str) -> str:
    m = re.search(rf"\[{name}\]\n(.*?)(?:\n\n\[|\Z)", text, re.S)
    return m.group(1) if m else ""


def reply(system: str, user: str, seed: int, model: str = "fake") -> str:
    if "English-to-Korean" in system:
        return "[ko] " + (user.replace("⟦0⟧", "", 1) if "LOSE" in user else user)
    if "into English" in system:
        return f"EN<<{user}>>"
    if "into Korean" in system:
        return user.removeprefix("EN<<").removesuffix(">>").replace("은 ", "는 ")
    if "[답변 A]" in user:
        a, b = "정답" in _section(user, "답변 A"), "정답" in _section(user, "답변 B")
        return "판정: 무승부" if a == b else f"판정: {'A' if a else 'B'}"
    if "새 과제 지시문을" in user:
        return "\n".join(f"{i + 1}. {t}" for i, t in enumerate(NEW_INSTRUCTIONS))
    if "새 지시문 하나로" in user:
        return "(심화) " + _section(user, "지시문").strip()
    if "[자료]" in user:
        text = _section(user, "자료").strip()
        first = text.split(".")[0]
        return json.dumps(
            {"question": f"{first[:12]}에 대해 알려 주세요", "answer": first + "."},
            ensure_ascii=False,
        )
    if model == "weak":
        return "모르겠어요"
    return f"정답 답변: {user[:40]}" if seed == 0 else f"모르겠어요 {seed}"


@app.post("/v1/chat/completions")
async def chat(request: Request):
    body = await request.json()
    app.state.calls += 1
    if app.state.latency:
        await asyncio.sleep(app.state.latency)
    messages = body["messages"]
    system = next((m["content"] for m in messages if m["role"] == "system"), "")
    text = reply(system, messages[-1]["content"], int(body.get("seed") or 0), body["model"])
    return {
        "id": f"fake-{app.state.calls}",
        "object": "chat.completion",
        "created": 0,
        "model": body["model"],
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }


@app.get("/calls")
async def calls():
    return {"calls": app.state.calls}


@app.get("/health")
async def health():
    return {"status": "ok"}


if __name__ == "__main__":
    import uvicorn

    app.state.latency = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
