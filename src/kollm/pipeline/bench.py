"""`kollm eval bench`: a registered version served in this process, lm-eval's tasks run
against that server, and the scores recorded on the version in the registry."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from kollm.config import ServeConfig
from kollm.eval.bench import (
    BUNDLED_GEN_TASK,
    BUNDLED_TASK,
    bundled_task_dir,
    check_tasks,
    run_tasks,
    served_chat_args,
    served_model_args,
)
from kollm.pipeline.serving import serve_in_process
from kollm.registry import Registry


@dataclass
class BenchResult:
    ref: str
    engine: str
    results: dict[str, dict[str, float]]


def _bundled_data(out: Path) -> Path:
    import json

    from kollm.samples.bench import generate_mc

    path = out / "kollm_ko_mc.jsonl"
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in generate_mc()), encoding="utf-8"
    )
    return path


def bench_version(
    ref: str,
    tasks: list[str],
    registry: Registry | None = None,
    engine: str = "ctranslate2",
    limit: int | None = None,
    include: list[Path] | None = None,
    num_fewshot: int | None = None,
    chat: bool = False,
) -> BenchResult:
    """Serve `ref` with `engine`, run `tasks` through lm-eval against it (local-completions;
    with `chat`, local-chat-completions, for generation tasks), and record the metrics on
    the version (kind `lm-eval`)."""
    registry = registry or Registry()
    version = registry.checkout(ref)
    include = list(include or [])
    with tempfile.TemporaryDirectory(prefix="kollm-bench-") as tmp:
        if BUNDLED_TASK in tasks or BUNDLED_GEN_TASK in tasks:
            include.append(bundled_task_dir(_bundled_data(Path(tmp)), Path(tmp) / "tasks"))
        check_tasks(tasks, include)
        server, url = serve_in_process(
            ServeConfig(models=[version.ref], engine=engine, log_requests=False), registry
        )
        try:
            if chat:
                model, args = "local-chat-completions", served_chat_args(url, version.name)
            else:
                context = _context_length(url, version.name)
                model = "local-completions"
                args = served_model_args(url, version.name, Path(version.artifact_path), context)
            results = run_tasks(model, args, tasks, include, limit, num_fewshot, chat)
        finally:
            server.should_exit = True
    registry.add_evaluation(
        version.ref,
        "lm-eval",
        {
            "tasks": results,
            "engine": engine,
            "api": "chat" if chat else "completions",
            "limit": limit,
            "num_fewshot": num_fewshot,
        },
    )
    return BenchResult(version.ref, engine, results)


def _context_length(url: str, model: str) -> int:
    import httpx

    r = httpx.post(url + "/tokenize", json={"model": model, "prompt": ""}, timeout=30)
    r.raise_for_status()
    return int(r.json()["max_model_len"])
