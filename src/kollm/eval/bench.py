"""Benchmarks through lm-evaluation-harness (`pip install 'kollm[bench]'`), run against a kollm
server so that what is measured is what is served: multiple-choice tasks through its
`local-completions` backend (prompt log-probabilities from `/v1/completions`), generation
tasks through `local-chat-completions`. Tasks are lm-eval's own (KoBEST, KMMLU, HAE-RAE ...,
their data from a local path or the Hugging Face cache the user has) or YAML tasks in a
directory; `kollm_ko_mc` is a small Korean multiple-choice task bundled with kollm."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Any

BUNDLED_TASK = "kollm_ko_mc"
_TASK_YAML = """task: kollm_ko_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "질문: {{{{question}}}}\\n답:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


BUNDLED_GEN_TASK = "kollm_ko_gen"
_GEN_YAML = """task: kollm_ko_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "질문: {{{{question}}}}\\n답:"
doc_to_target: "{{{{choices[answer]}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 16
  do_sample: false
metric_list:
  - metric: chrf
    aggregation: chrf
    higher_is_better: true
"""


class BenchError(RuntimeError):
    """lm-eval is missing, or a task cannot be found or run; the message says which."""


def bundled_task_dir(data: Path, out: Path | None = None) -> Path:
    """A dir holding the bundled task YAMLs over `data` (the bundled JSONL): `kollm_ko_mc`
    (multiple choice, scored by log-probabilities) and `kollm_ko_gen` (the same questions
    answered in words, chrF against the right choice)."""
    out = out or Path(tempfile.mkdtemp(prefix="kollm-tasks-"))
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (("kollm_ko_mc", _TASK_YAML), ("kollm_ko_gen", _GEN_YAML)):
        (out / f"{name}.yaml").write_text(text.format(data=Path(data).resolve()), "utf-8")
    return out


def _lm_eval():
    import logging

    try:
        import lm_eval
        import lm_eval.utils
        from lm_eval.tasks import TaskManager
    except ImportError as err:
        raise BenchError(
            "benchmarks need lm-evaluation-harness: pip install 'kollm[bench]'"
        ) from err
    # lm-eval would add a handler bound to the sys.stderr of the moment (a test's or a CLI
    # runner's captured stream, closed later); its records go through kollm's logging instead
    lm_eval.utils._LOGGING_CONFIGURED = True
    logging.getLogger("lm_eval").propagate = True
    return lm_eval, TaskManager


@functools.lru_cache(maxsize=4)
def _task_manager(include: tuple[str, ...], defaults: bool):
    """lm-eval's index of the tasks in `include`, and with `defaults` of its own ~15,000 (a
    dozen seconds to build: it reads every task's YAML), once a process."""
    _, TaskManager = _lm_eval()
    return TaskManager(include_path=list(include) or None, include_defaults=defaults)


def check_tasks(tasks: list[str], include: list[Path]):
    """lm-eval's task index, once every name in `tasks` is in it (BenchError naming the rest):
    called before the model is served, so a misspelt task costs no model load. Tasks all
    found in `include` (the bundled Korean ones) skip indexing lm-eval's own."""
    paths = tuple(str(p) for p in include)
    manager = _task_manager(paths, False) if paths else None
    if manager is None or any(t not in manager.all_tasks for t in tasks):
        manager = _task_manager(paths, True)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise BenchError(f"unknown task(s): {', '.join(unknown)} (lm-eval has no such task)")
    return manager


def run_tasks(
    model: str,
    model_args: dict[str, Any],
    tasks: list[str],
    include: list[Path],
    limit: int | None = None,
    num_fewshot: int | None = None,
    apply_chat_template: bool = False,
) -> dict[str, dict[str, float]]:
    """lm-eval's `simple_evaluate`; returns each task's numeric metrics."""
    lm_eval, _ = _lm_eval()
    manager = check_tasks(tasks, include)
    out = lm_eval.simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=tasks,
        limit=limit,
        num_fewshot=num_fewshot,
        task_manager=manager,
        batch_size=1,
        log_samples=False,
        apply_chat_template=apply_chat_template,
    )
    return {
        task: {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
        for task, metrics in out["results"].items()
    }


def served_model_args(base_url: str, model_id: str, tokenizer_dir: Path, context: int) -> dict:
    """local-completions' settings for a kollm server: the served model's own tokenizer, its
    context length, prompts sent as token ids (exact scoring)."""
    return {
        "base_url": base_url.rstrip("/") + "/v1/completions",
        "model": model_id,
        "tokenizer_backend": "huggingface",
        "tokenizer": str(tokenizer_dir),
        "tokenized_requests": True,
        "max_length": context,
        "num_concurrent": 1,
        "max_retries": 2,
    }


def served_chat_args(base_url: str, model_id: str) -> dict:
    """local-chat-completions' settings for a kollm server: each prompt a user turn, which the
    server renders in the version's own prompt format."""
    return {
        "base_url": base_url.rstrip("/") + "/v1/chat/completions",
        "model": model_id,
        "num_concurrent": 1,
        "max_retries": 2,
    }
