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

FORMATS = ("sft", "dpo", "kto")


def user_text(request_json: str) -> str:
    """What the user asked, from a logged request: the last user message, or the prompt."""
    request = json.loads(request_json)
    if "messages" in request:
        users = [m for m in request["messages"] if m.get("role") == "user"]
        content = (users or request["messages"])[-1]["content"]
        return content if isinstance(content, str) else " ".join(p.get("text", "") for p in content)
    prompt = request.get("prompt", "")
    return prompt if isinstance(prompt, str) else prompt[0]


def to_rows(
    rows: list[dict[str, Any]], fmt: str, kind: str = "instruction"
) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        prompt, answer, correction = user_text(row["request"]), row["response"], row["correction"]
        base = {
            "id": f"fb{row['id']}",
            "response_id": row["response_id"],
            "model_version": row["model_version"],
        }
        if fmt == "kto":
            out.append(
                {**base, "prompt": prompt, "completion": answer, "label": bool(row["is_good"])}
            )
            if correction:
                out.append(
                    {
                        **base,
                        "id": f"fb{row['id']}c",
                        "prompt": prompt,
                        "completion": correction,
                        "label": True,
                    }
                )
        elif correction and fmt == "dpo":
            out.append({**base, "prompt": prompt, "chosen": correction, "rejected": answer})
        elif correction and kind == "dialogue_summary":
            out.append({**base, "dialogue": prompt, "summary": correction})
        elif correction:
            out.append({**base, "instruction": prompt, "input": "", "output": correction})
    return out


_FIELDS = {
    "sft": ("instruction", "input", "output"),
    "dpo": ("prompt", "chosen", "rejected"),
    "kto": ("prompt", "completion"),
}


def export_feedback(rows: list[dict[str, Any]], fmt: str, out_dir: Path, kind: str = "instruction"):
    """Write `<fmt>.jsonl` and `manifest.json` into `out_dir`; returns the manifest."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use {', '.join(FORMATS)}")
    records = to_rows(rows, fmt, kind)
    fields = (
        ("dialogue", "summary") if fmt == "sft" and kind == "dialogue_summary" else _FIELDS[fmt]
    )
    key = fields[:2] if fmt != "kto" else fields  # a pair is the same pair whatever it rejects
    steps = [PiiMasker(fields), ExactDeduplicator(key)]
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
