"""`kollm demo --loop`: the feedback loop on the embedded default, end to end, on this machine.

The production model is served in-process on a loopback port; scripted users ask it to
summarise training dialogues over HTTP and correct each answer with the gold summary through
`POST /v1/feedback`; then `kollm loop` runs: trigger, DPO from production, evaluation of both,
gate, and promotion or rejection.
"""

from __future__ import annotations

import socket
import threading
import time

import httpx

from kollm.config import Recipe
from kollm.data.io import read_jsonl
from kollm.pipeline.loop import LoopDecision, run_loop
from kollm.registry import Registry


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(recipe: Recipe, ref: str, registry: Registry):
    import uvicorn

    from kollm.serve.server import build_server

    # The recipe's serve section (engine, domains, adapters), serving the production alias.
    app, _ = build_server(recipe.serve.model_copy(update={"models": [ref]}), registry)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return server, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.should_exit = True
    raise TimeoutError("the demo server did not become ready")


def scripted_feedback(recipe: Recipe, url: str, count: int) -> int:
    """Users ask for summaries and correct every answer with the gold one; returns corrections."""
    rows = read_jsonl(recipe.split_path("train"))
    corrections = 0
    with httpx.Client(base_url=url, timeout=120) as http:
        for row in rows[:count]:
            chat = http.post(
                "/v1/chat/completions",
                json={
                    "model": recipe.model_name,
                    "messages": [{"role": "user", "content": row["dialogue"]}],
                    "max_tokens": 60,
                    "temperature": 0,
                },
            ).json()
            answer = chat["choices"][0]["message"]["content"]
            good = answer.strip() == row["summary"].strip()
            http.post(
                "/v1/feedback",
                json={
                    "response_id": chat["id"],
                    "rating": "good" if good else "bad",
                    "categories": [] if good else ["hallucination"],
                    "correction": None if good else row["summary"],
                },
            ).raise_for_status()
            corrections += not good
    return corrections


def demo_loop(recipe: Recipe, registry: Registry, count: int = 24) -> tuple[int, LoopDecision]:
    """Serve production, post scripted feedback over HTTP, then run the loop."""
    ref = f"{recipe.model_name}@{recipe.loop.alias}"
    server, url = _serve(recipe, ref, registry)
    try:
        corrections = scripted_feedback(recipe, url, count)
    finally:
        server.should_exit = True
    # No force: the scripted corrections have to meet the recipe's trigger rule by themselves.
    return corrections, run_loop(recipe, registry)
