"""The eval stage: generate for the eval split, score ROUGE beside the lead baseline, write it up.

Outputs in the eval dir: predictions.jsonl (id, prediction, references, per-example scores),
metrics.json, report.md and report.html (the table and the worst examples).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kollm.config import EvalConfig
from kollm.data.io import read_jsonl, write_json, write_jsonl
from kollm.engines.base import GenerationParams
from kollm.engines.transformers_engine import TransformersEngine
from kollm.eval.baseline import lead
from kollm.eval.perplexity import answer_perplexity
from kollm.eval.report import write_eval_report
from kollm.eval.rouge import corpus_rouge
from kollm.prompts import PromptFormat, load_format, recipe_format, record_prompt, references

Advance = Callable[[int], None]


@dataclass
class EvalResult:
    metrics: dict[str, Any]
    predictions: list[dict[str, Any]]
    files: dict[str, Path]


def read_records(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """The records to evaluate: the project's one JSONL reader."""
    return read_jsonl(path, limit)


def generation_params(cfg: EvalConfig) -> GenerationParams:
    """The decoding settings of an eval section."""
    d = cfg.decoding
    return GenerationParams(
        max_new_tokens=d.max_new_tokens,
        num_beams=d.num_beams,
        do_sample=d.do_sample,
        temperature=d.temperature,
        top_p=d.top_p,
        no_repeat_ngram_size=d.no_repeat_ngram_size,
        repetition_penalty=d.repetition_penalty,
        seed=0 if d.do_sample else None,
    )


def generate_all(engine, prompts: list[str], cfg: EvalConfig, advance: Advance | None) -> list[str]:
    """Answers for every prompt, in batches of `cfg.batch_size`."""
    params = generation_params(cfg)
    outputs: list[str] = []
    for start in range(0, len(prompts), cfg.batch_size):
        batch = prompts[start : start + cfg.batch_size]
        outputs.extend(g.text.strip() for g in engine.generate(batch, params))
        if advance is not None:
            advance(len(batch))
    return outputs


def evaluate_model(
    model_dir: Path,
    records: list[dict[str, Any]],
    fmt: PromptFormat,
    cfg: EvalConfig,
    out_dir: Path,
    advance: Advance | None = None,
    trust_remote_code: bool = False,
) -> EvalResult:
    """Generate, score against references and the lead baseline, and write every output;
    `trust_remote_code` lets a model that ships its modeling code load."""
    engine = TransformersEngine(model_dir, trust_remote_code=trust_remote_code)
    engine.load()
    prompts = [record_prompt(fmt, r, engine.tokenizer) for r in records]
    refs = [references(fmt, r) for r in records]
    kind = fmt.kind
    if kind == "text":
        return _perplexity_only(engine, prompts, refs, model_dir, out_dir, records)
    predictions = generate_all(engine, prompts, cfg, advance)
    rouge_args = {
        "tokenize": cfg.tokenize,
        "multi_ref": cfg.multi_ref,
        "morpheme_tokenizer": cfg.morpheme_tokenizer,
    }
    model_scores, per_example = corpus_rouge(predictions, refs, **rouge_args)
    source_field = next(iter(_source_fields(kind, records)), None)
    metrics: dict[str, Any] = {
        "model": model_scores,
        "examples": len(records),
        "model_dir": str(model_dir),
    }
    if source_field:
        baseline = [lead(str(r.get(source_field, "")), cfg.baseline_lead) for r in records]
        metrics["baseline_lead"] = corpus_rouge(baseline, refs, **rouge_args)[0]
    if not engine.is_encoder_decoder:
        answers = [r[0] for r in refs]
        metrics["perplexity"] = answer_perplexity(
            engine.model, engine.tokenizer, prompts, answers, engine.device
        )
        metrics.update(_by_source(engine, records, prompts, answers))
    rows = [
        {"id": r.get("id", i), "prediction": p, "references": ref, **scores}
        for i, (r, p, ref, scores) in enumerate(
            zip(records, predictions, refs, per_example, strict=True)
        )
    ]
    files = {"predictions": out_dir / "predictions.jsonl", "metrics": out_dir / "metrics.json"}
    write_jsonl(files["predictions"], rows)
    write_json(files["metrics"], metrics)
    files.update(write_eval_report(metrics, rows, prompts, out_dir, cfg.worst_examples))
    return EvalResult(metrics, rows, files)


def model_format(model_dir: Path, fallback: PromptFormat) -> PromptFormat:
    """The format a model dir was trained with (`kollm_prompt.json`), else `fallback`."""
    return load_format(model_dir) or fallback


def evaluate_recipe(
    recipe, model_dir: Path, out_dir: Path, advance: Advance | None = None
) -> EvalResult:
    """The one way a stage asks for an evaluation: the recipe's eval split and settings."""
    cfg = recipe.eval or EvalConfig()
    records = read_records(recipe.split_path(cfg.split), cfg.max_samples)
    fmt = model_format(model_dir, recipe_format(recipe))
    trust = recipe.model.trust_remote_code
    return evaluate_model(model_dir, records, fmt, cfg, out_dir, advance, trust)


def _by_source(engine, records, prompts, answers) -> dict[str, Any]:
    """For a mixed corpus (records with `source`): the perplexity on each source's records,
    so a site sees what the domain data cost the general ability."""
    groups: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        if record.get("source"):
            groups.setdefault(str(record["source"]), []).append(i)
    if len(groups) < 2:
        return {}
    scores = {
        name: answer_perplexity(
            engine.model,
            engine.tokenizer,
            [prompts[i] for i in idx],
            [answers[i] for i in idx],
            engine.device,
        )
        for name, idx in sorted(groups.items())
    }
    return {"perplexity_by_source": scores}


def _perplexity_only(
    engine, prompts, refs, model_dir: Path, out_dir: Path, records=()
) -> EvalResult:
    """Plain-text (pretraining) recipes: nothing to summarise, so perplexity alone."""
    answers = [r[0] for r in refs]
    ppl = answer_perplexity(engine.model, engine.tokenizer, prompts, answers, engine.device)
    metrics = {"perplexity": ppl, "examples": len(prompts), "model_dir": str(model_dir)}
    metrics.update(_by_source(engine, records, prompts, answers))
    files = {"metrics": out_dir / "metrics.json"}
    write_json(files["metrics"], metrics)
    return EvalResult(metrics, [], files)


def _source_fields(kind: str, records: list[dict[str, Any]]) -> list[str]:
    """The field the lead baseline extracts from: the dialogue, the input, or the text."""
    preferred = {"dialogue_summary": "dialogue", "instruction": "input", "text": "text"}.get(kind)
    if preferred and records and records[0].get(preferred):
        return [preferred]
    return []
