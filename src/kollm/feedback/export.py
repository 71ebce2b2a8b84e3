"""From feedback to training data: corrections -> SFT rows and DPO pairs; thumbs -> KTO rows.

The PII masker and dedup run on the way out, and the export is a dataset version: its files
and a manifest whose sha256 the registry's lineage can point to.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from kollm.data.io import write_json, write_jsonl
from kollm.data.pipeline import run_steps
from kollm.data.steps.dedup import ExactDeduplicator, MinhashDeduplicator
from kollm.data.steps.pii import PiiMasker
from kollm.tasks import TaskConfig, task_messages

FORMATS = ("sft", "dpo", "kto")


def conversation(
    request_json: str, tasks: dict[str, TaskConfig] | None = None
) -> list[dict[str, str]]:
    """Every turn of a logged request before the answer (system included), or its prompt.
    A request to a task service (`task` in the log) gets the task's system prompt and template
    back from `tasks`, so the model trains on the prompt it answered."""
    request = json.loads(request_json)
    if "messages" in request:
        turns = [
            {"role": m.get("role", "user"), "content": _content(m.get("content", ""))}
            for m in request["messages"]
        ]
        task = (tasks or {}).get(request.get("task") or "")
        return task_messages(task, turns) if task is not None else turns
    prompt = request.get("prompt", "")
    return [{"role": "user", "content": prompt if isinstance(prompt, str) else prompt[0]}]


def _content(content: Any) -> str:
    return content if isinstance(content, str) else " ".join(p.get("text", "") for p in content)


def user_text(turns: list[dict[str, str]]) -> str:
    """The last user turn: what a single-turn record keeps."""
    users = [m["content"] for m in turns if m["role"] == "user"]
    return (users or [turns[-1]["content"]])[-1]


def _sft_row(base: dict[str, Any], turns: list[dict[str, str]], answer: str, kind: str):
    if kind == "chat":
        return {**base, "messages": [*turns, {"role": "assistant", "content": answer}]}
    if kind == "dialogue_summary":
        return {**base, "dialogue": user_text(turns), "summary": answer}
    return {**base, "instruction": user_text(turns), "input": "", "output": answer}


def to_rows(
    rows: list[dict[str, Any]],
    fmt: str,
    kind: str = "instruction",
    tasks: dict[str, TaskConfig] | None = None,
) -> list[dict[str, Any]]:
    """Feedback rows as training rows; DPO and KTO rows keep the whole conversation the rated
    answer was given in (`messages`) beside its last user turn (`prompt`)."""
    out = []
    for row in rows:
        turns = conversation(row["request"], tasks)
        answer, correction = row["response"], row["correction"]
        base = {
            "id": f"fb{row['id']}",
            "response_id": row["response_id"],
            "model_version": row["model_version"],
        }
        asked = {"prompt": user_text(turns), "messages": turns}
        if fmt == "kto":
            out.append({**base, **asked, "completion": answer, "label": bool(row["is_good"])})
            if correction:
                out.append(
                    {
                        **base,
                        **asked,
                        "id": f"fb{row['id']}c",
                        "completion": correction,
                        "label": True,
                    }
                )
        elif correction and fmt == "dpo":
            out.append({**base, **asked, "chosen": correction, "rejected": answer})
        elif correction:
            out.append(_sft_row(base, turns, correction, kind))
    return out


_FIELDS = {
    "sft": ("instruction", "input", "output"),
    "dpo": ("prompt", "chosen", "rejected"),
    "kto": ("prompt", "completion"),
}


def export_feedback(
    rows: list[dict[str, Any]],
    fmt: str,
    out_dir: Path,
    kind: str = "instruction",
    tasks: dict[str, TaskConfig] | None = None,
):
    """Write `<fmt>.jsonl` and `manifest.json` into `out_dir`; returns the manifest. `tasks`:
    the task services the answers were given under (see `conversation`)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use {', '.join(FORMATS)}")
    records = to_rows(rows, fmt, kind, tasks)
    fields = _FIELDS[fmt]
    if fmt == "sft" and kind in ("dialogue_summary", "chat"):
        fields = {"dialogue_summary": ("dialogue", "summary"), "chat": ("messages",)}[kind]
    key = fields[:2] if fmt != "kto" else fields  # a pair is the same pair whatever it rejects
    masked = fields if fmt == "sft" else (*fields, "messages")
    steps = [PiiMasker(masked), ExactDeduplicator(key)]
    if fmt != "kto":  # a thumbs-down answer and its correction share a prompt but are both kept
        steps.append(MinhashDeduplicator(key))
    kept = list(run_steps(steps, records))
    data = out_dir / f"{fmt}.jsonl"
    write_jsonl(data, kept)
    manifest = {
        "format": fmt,
        "kind": kind if fmt == "sft" else fmt,
        "rows": len(kept),
        "from_feedback": len(rows),
        "dropped": {s.name: s.stats.dropped for s in steps},
        "file": data.name,
        "sha256": hashlib.sha256(data.read_bytes()).hexdigest(),
    }
    write_json(out_dir / "manifest.json", manifest)
    return manifest
