"""`kollm synth RECIPE`: the recipe's synthesis steps in order (each reads the one before, or
its own input), every result through the data stage's cleaning, and a manifest with the
lineage: endpoint, model, each step's prompt template hash and seed, counts, calls, tokens and
the output's sha256, so a version trained on it can be traced back."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kollm.config import EndpointConfig, Recipe, SynthConfig, SynthTaskConfig
from kollm.data.io import read_jsonl, write_json, write_jsonl
from kollm.endpoint import Endpoint, EndpointCache, EndpointClient
from kollm.synth import steps as s

STEPS = {
    "translate": s.Translator,
    "answer": s.Answerer,
    "self_instruct": s.SelfInstructor,
    "evolve": s.Evolver,
    "doc_qa": s.DocQaGenerator,
    "back_translate": s.BackTranslator,
    "preference": s.PreferenceBuilder,
}


class SynthError(ValueError):
    """A synthesis step that cannot run (no input, unknown collection); names the step."""


def client_for(cfg: EndpointConfig, home: Path | str | None = None) -> EndpointClient:
    endpoint = Endpoint(cfg.url, cfg.model, None, cfg.temperature, cfg.max_tokens, cfg.timeout_s)
    return EndpointClient(endpoint, EndpointCache(home), cfg.concurrency, cfg.retries)


def build_step(task: SynthTaskConfig, client, judge, seed: int, home=None) -> s.SynthStep:
    cls = STEPS[task.task]
    if task.task == "answer":
        return cls(client, seed, task.field)
    if task.task == "back_translate":
        return cls(client, seed, tuple(task.fields))
    if task.task == "self_instruct":
        return cls(client, seed, task.rounds, task.per_round, task.max_rouge_l)
    if task.task == "preference":
        sources = [client_for(e, home) for e in task.sources] or None
        return cls(client, judge, seed, task.n, sources=sources)
    return cls(client, seed)


def collection_records(collection: str, home=None) -> list[dict[str, Any]]:
    """A RAG collection's chunks as records for doc_qa."""
    from kollm.rag.index import RagIndex

    rows = RagIndex(home).collection_chunks(collection)
    return [{"chunk_id": r["id"], "doc_id": r["doc_id"], "text": r["text"]} for r in rows]


def _inputs(task: SynthTaskConfig, previous, number: int, home) -> list[dict[str, Any]]:
    if task.task == "doc_qa":
        if not task.collection:
            raise SynthError(f"synth.tasks[{number}] doc_qa: name its collection")
        rows = collection_records(task.collection, home)
        if not rows:
            raise SynthError(
                f"synth.tasks[{number}] doc_qa: collection '{task.collection}' "
                "is empty or missing (kollm rag index)"
            )
    elif task.input:
        rows = read_jsonl(Path(task.input))
    elif previous is not None:
        rows = previous
    else:
        raise SynthError(f"synth.tasks[{number}] {task.task}: give it an input JSONL")
    return rows[: task.limit] if task.limit else rows


def _kind(rows: list[dict[str, Any]]) -> str | None:
    if rows and all({"prompt", "chosen", "rejected"} <= set(r) for r in rows):
        return "preference"
    if rows and all("instruction" in r and r.get("output") for r in rows):
        return "instruction"
    if rows and all("dialogue" in r and "summary" in r for r in rows):
        return "dialogue_summary"
    return None


def clean(rows: list[dict[str, Any]], kind_name: str | None) -> tuple[list[dict], list[dict]]:
    """The data stage's normaliser, PII masker, placeholder filter and dedup over `rows`."""
    from kollm.config import DedupConfig
    from kollm.data.pipeline import run_steps
    from kollm.data.records import KINDS
    from kollm.data.steps.dedup import ExactDeduplicator, MinhashDeduplicator
    from kollm.data.steps.filters import PlaceholderOnlyFilter
    from kollm.data.steps.normalise import TextNormaliser
    from kollm.data.steps.pii import PiiMasker

    if kind_name is None:
        return rows, []
    kind, dedup = KINDS[kind_name], DedupConfig()
    cleaning = [
        TextNormaliser(kind.text_fields),
        PiiMasker(kind.text_fields),
        PlaceholderOnlyFilter(kind.required),
        ExactDeduplicator(kind.key_fields),
        MinhashDeduplicator(kind.key_fields, dedup.threshold, dedup.ngram, dedup.num_perm),
    ]
    dropped: list[dict] = []
    kept = list(run_steps(cleaning, [dict(r) for r in rows], dropped))
    return [_masked_provenance(r) for r in kept], dropped


PROVENANCE = ("translated_from", "evolved_from", "answers")  # copies of source text


def _masked_provenance(record: dict[str, Any]) -> dict[str, Any]:
    """The source texts a record keeps for its lineage, PII-masked like its own fields."""
    from kollm.text.pii import mask_nested

    return {k: (mask_nested(v) if k in PROVENANCE else v) for k, v in record.items()}


@dataclass
class SynthResult:
    output: Path
    manifest: dict[str, Any]


def run_synth(recipe: Recipe, home: Path | str | None = None, progress=None) -> SynthResult:
    """Run the steps; `progress(name, total)` gives an advance callback for each step."""
    import logging

    log = logging.getLogger("kollm.synth")
    cfg: SynthConfig = recipe.synth
    out_dir = Path(cfg.output.format(run_dir=recipe.run_dir, name=recipe.name))
    client = client_for(cfg.endpoint, home)
    judge = client_for(cfg.judge, home) if cfg.judge else client
    rows, stages = None, []
    for number, task in enumerate(cfg.tasks):
        step = build_step(task, client, judge, cfg.seed, home)
        inputs = _inputs(task, rows, number, home)
        log.info("synth: step %d %s over %d records", number, task.task, len(inputs))
        if progress is not None:
            with progress(f"{number} {task.task}", len(inputs)) as advance:
                step.advance = advance
                rows = step.run(inputs)
        else:
            rows = step.run(inputs)
        write_jsonl(out_dir / f"{number}_{task.task}.jsonl", rows)
        stages.append({**step.stats.as_dict(), "template_sha": step.template_sha()})
        log.info("synth: %s kept %d, dropped %d", task.task, step.stats.kept, step.stats.dropped)
    return finish(out_dir, rows or [], cfg.clean, lineage(cfg, stages, client, judge))


def lineage(cfg: SynthConfig, stages, client, judge) -> dict[str, Any]:
    return {
        "endpoint": {
            "url": cfg.endpoint.url,
            "model": cfg.endpoint.model,
            "temperature": cfg.endpoint.temperature,
        },
        "judge": {"url": judge.endpoint.url, "model": judge.endpoint.model},
        "seed": cfg.seed,
        "seed_honoured": not client.seed_refused,  # an endpoint that cannot repeat a sample
        "steps": stages,
        "usage": {
            "calls": client.usage.calls,
            "cache_hits": client.cache.hits,
            "prompt_tokens": client.usage.prompt_tokens,
            "completion_tokens": client.usage.completion_tokens,
            "by_step": client.usage.by_step,
        },
    }


def finish(out_dir: Path, rows, do_clean: bool, manifest: dict[str, Any]) -> SynthResult:
    """Clean the rows (pending preference pairs go to their own file), write the dataset and
    its manifest with the output's sha256."""
    pending = [r for r in rows if r.get("review") == "pending"]
    ready = [r for r in rows if r.get("review") != "pending"]
    kind = _kind(ready)
    kept, dropped = clean(ready, kind) if do_clean else (ready, [])
    output = out_dir / "output.jsonl"
    write_jsonl(output, kept)
    write_jsonl(out_dir / "dropped.jsonl", dropped)
    if pending:
        write_jsonl(out_dir / "pending_review.jsonl", pending)
    manifest = {
        **manifest,
        "kind": kind,
        "records": len(kept),
        "dropped_by_cleaning": len(dropped),
        "pending_review": len(pending),
        "output": str(output),
        "sha256": hashlib.sha256(output.read_bytes()).hexdigest(),
    }
    write_json(out_dir / "manifest.json", manifest)
    return SynthResult(output, manifest)
