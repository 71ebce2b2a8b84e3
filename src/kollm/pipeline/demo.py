"""`kollm demo --loop`: the feedback loop on the embedded default, end to end, on this machine.

The production model is served in-process on a loopback port; scripted users ask it to
summarise training dialogues over HTTP and correct each answer with the gold summary through
`POST /v1/feedback`; then `kollm loop` runs: trigger, DPO from production, evaluation of both,
gate, and promotion or rejection. Nobody reviews the scripted corrections, so the demo trains
on all the feedback (`loop.train_on: all`, said in a log line) where a deployment's default
trains only on what a reviewer confirmed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import httpx

from kollm.config import Recipe
from kollm.data.io import read_jsonl
from kollm.pipeline.loop import LoopDecision, run_loop
from kollm.pipeline.serving import serve_in_process
from kollm.registry import Registry

log = logging.getLogger("kollm.demo")


def _serve(recipe: Recipe, ref: str, registry: Registry, rag: str | None = None):
    # The recipe's serve section (engine, domains, adapters), serving the production alias.
    cfg = recipe.serve.model_copy(update={"models": [ref], "rag": rag or recipe.serve.rag})
    return serve_in_process(cfg, registry, recipe.rag)


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
    """Serve production, post scripted feedback over HTTP, then run the loop on all of it."""
    if recipe.loop.train_on != "all":
        recipe = recipe.model_copy(
            update={"loop": recipe.loop.model_copy(update={"train_on": "all"})}
        )
    log.info(
        "demo: loop.train_on=all: the scripted corrections train unreviewed"
        " (a deployment's default, reviewed, trains only on what a reviewer confirmed)"
    )
    ref = f"{recipe.model_name}@{recipe.loop.alias}"
    server, url = _serve(recipe, ref, registry)
    try:
        corrections = scripted_feedback(recipe, url, count)
    finally:
        server.should_exit = True
    # No force: the scripted corrections have to meet the recipe's trigger rule by themselves.
    return corrections, run_loop(recipe, registry)


DEMO_QUESTIONS = ("전입신고를 할 때 필요한 서류가 뭔가요?", "여권 재발급 수수료가 있나요?")


@dataclass
class RagDemo:
    collection: str
    chunks: int
    ndcg_at_10: float
    queries: int
    answers: list[dict]  # question, answer, citations


def demo_rag(recipe: Recipe, registry: Registry, queries: Path | None = None) -> RagDemo:
    """Index the recipe's documents, measure retrieval on the labelled queries, then serve
    production bound to the collection and ask DEMO_QUESTIONS over HTTP."""
    from kollm.rag.evaluate import evaluate_retrieval, read_queries
    from kollm.rag.limits import Limits
    from kollm.rag.search import Retriever

    settings = recipe.rag
    retriever = Retriever(settings, registry.home)
    report = retriever.index.index_paths(
        settings.collection,
        [Path(p) for p in settings.paths],
        max_chars=settings.max_chars,
        limits=Limits.from_config(settings),
    )
    scores = None
    if queries is not None and queries.exists():
        labelled = read_queries(queries)
        scores = evaluate_retrieval(
            lambda q, k: retriever.retrieve(settings.collection, q, k), labelled
        )
    server, url = _serve(
        recipe, f"{recipe.model_name}@{recipe.loop.alias}", registry, settings.collection
    )
    answers = []
    try:
        with httpx.Client(base_url=url, timeout=120) as http:
            for question in DEMO_QUESTIONS:
                body = http.post(
                    "/v1/chat/completions",
                    json={
                        "model": recipe.model_name,
                        "messages": [{"role": "user", "content": question}],
                        "max_tokens": 40,
                        "temperature": 0,
                    },
                )
                if body.status_code != 200:
                    raise RuntimeError(f"the RAG question failed: {body.text}")
                body = body.json()
                answers.append(
                    {
                        "question": question,
                        "answer": body["choices"][0]["message"]["content"],
                        "citations": body.get("citations", []),
                    }
                )
    finally:
        server.should_exit = True
    chunks = retriever.index.collections().get(settings.collection, report.chunks)
    return RagDemo(
        settings.collection,
        chunks,
        scores.ndcg_at_10 if scores else float("nan"),
        scores.queries if scores else 0,
        answers,
    )
