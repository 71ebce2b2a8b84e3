"""The batch tier: generate over a file and write the results; no server.

Input is JSONL, one request a line: `{"prompt": ...}` (a completion) or `{"messages": [...]}`
(a chat, OpenAI's message format), with any other fields carried through. Each output line is
the input plus `output`, `finish_reason` and `model_version`. Chats get the same prompt as
`kollm serve` builds (the version's prompt format, `kollm.prompts`). The
output is written under a temporary name and renamed at the end, so a failed run leaves none.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kollm.config import ServeConfig
from kollm.data.io import DataError, iter_jsonl
from kollm.engines.base import GenerationParams
from kollm.registry import Registry
from kollm.serve.server import build_manager

log = logging.getLogger("kollm.batch")


class BatchInputError(ValueError):
    """A request line that cannot be read; the message names the file and line."""


def read_requests(path: Path) -> list[dict[str, Any]]:
    """Requests of a batch file; a bad line is named by file and line."""
    rows = []
    try:
        for number, row in iter_jsonl(path):
            if not isinstance(row, dict) or not ({"prompt", "messages"} & row.keys()):
                raise BatchInputError(
                    f"{path}: line {number}: expected an object with prompt or messages"
                )
            rows.append(row)
    except DataError as err:
        raise BatchInputError(str(err)) from err
    return rows


def _prompt(row: dict[str, Any], served) -> str:
    if "prompt" in row:
        return str(row["prompt"])
    messages = [{"role": m["role"], "content": str(m["content"])} for m in row["messages"]]
    return served.prompt_for(messages)


def generate_file(
    ref: str,
    input_path: Path | str,
    output_path: Path | str,
    engine: str = "ctranslate2",
    params: GenerationParams | None = None,
    batch_size: int = 8,
    home: Path | str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Generate an answer for every request in `input_path`; returns how many were written."""
    input_path, output_path = Path(input_path), Path(output_path)
    rows = read_requests(input_path)
    manager = build_manager(ServeConfig(models=[ref], engine=engine), Registry(home))
    served = manager.load(ref)
    params = params or GenerationParams(max_new_tokens=128)
    tmp = output_path.with_name(output_path.name + ".tmp")
    output_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with tmp.open("w", encoding="utf-8") as out:
            for start in range(0, len(rows), batch_size):
                chunk = rows[start : start + batch_size]
                answers = served.engine.generate([_prompt(r, served) for r in chunk], params)
                for row, answer in zip(chunk, answers, strict=True):
                    result = {**row, "output": answer.text, "finish_reason": answer.finish_reason}
                    out.write(
                        json.dumps({**result, "model_version": served.version}, ensure_ascii=False)
                        + "\n"
                    )
                if progress is not None:
                    progress(start + len(chunk), len(rows))
        tmp.replace(output_path)
    finally:
        tmp.unlink(missing_ok=True)
        served.engine.unload()
    return len(rows)
