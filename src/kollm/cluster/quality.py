"""What an export costs, measured when it is made (`kollm export`), and a table to choose a
precision by (`kollm export REF --compare q8_0,q4_K_M,int8`): size, load time, tokens/s on this
machine, perplexity ratio and agreement against the registered weights, as JSON and HTML.

A GGUF is served by llama-server, which gives no prompt log-probabilities: its figures are
whole-answer agreement only, and say so (`not_measured`)."""

from __future__ import annotations

import html
import json
import time
from pathlib import Path
from typing import Any

from kollm.cluster.export import CT2_QUANTS, Export, ExportError, export_model, merged, resolve
from kollm.engines.base import Engine, GenerationParams
from kollm.engines.quality import Sample, conversation_sample, measure_conversion
from kollm.registry import ModelVersion, Registry

SAMPLE = "kollm.samples.chats (seed 0)"
SPEED_PROMPT = "user: 안녕하세요, 마포구에 사는데요. 전입신고 하려고 해요.\nassistant:"
N_SAMPLES = 10  # 4 measured one by one, 6 joined into the long one


def bundled_samples() -> list[Sample]:
    """Multi-turn Korean service conversations, the later answers tied to the first turn."""
    from kollm.samples.chats import generate_chats

    return [conversation_sample(c["messages"]) for c in generate_chats(N_SAMPLES, seed=0)]


def dev_split(version: ModelVersion | None) -> Path | None:
    """The prepared dev split of the recipe a version was registered from, where it is still
    on this machine (the recipe's data dir, overrides recorded with it applied)."""
    if version is None or not version.recipe_text:
        return None
    import yaml

    from kollm.config import parse_overrides

    spec = yaml.safe_load(version.recipe_text) or {}
    overrides = [x[len("# override: ") :] for x in version.recipe_text.splitlines()]
    given = parse_overrides([o for o in overrides if o.startswith(("output_dir=", "data."))])
    name = spec.get("name", version.name)
    run_dir = str(given.get("output_dir", spec.get("output_dir", "runs/{name}")))
    data = given.get("data.output_dir", (spec.get("data") or {}).get("output_dir"))
    path = Path(data or Path(run_dir.format(name=name)) / "data") / "dev.jsonl"
    return path if path.is_file() else None


def version_samples(version: ModelVersion | None, tokenizer) -> tuple[list[Sample], str]:
    """(samples, where from): the version's dev split rendered in its prompt format, else
    the bundled conversations."""
    from kollm.prompts import training_examples

    path = dev_split(version)
    fmt = version.format if version else None
    if path is None or fmt is None:
        return bundled_samples(), SAMPLE
    samples: list[Sample] = []
    for line in path.read_text(encoding="utf-8").splitlines()[: N_SAMPLES * 3]:
        if line.strip():
            samples += training_examples(fmt, json.loads(line), tokenizer)[-1:]
    if len(samples) < N_SAMPLES:
        return bundled_samples(), SAMPLE
    return samples[:N_SAMPLES], f"dev split {path}"


def converted_engine(model_dir: Path, result: Export) -> Engine:
    """The engine kollm serves the export with, on the exported file itself."""
    if result.format == "ct2":
        from kollm.engines.ctranslate2_engine import CTranslate2Engine

        quant = result.quant or "int8"
        # CPUs compute float16 weights in float32 (CTranslate2 refuses float16 compute there)
        compute = "float32" if quant == "float16" else quant
        return CTranslate2Engine(model_dir, compute, conversion_dir=result.path)
    from kollm.engines.llamacpp_engine import LlamaCppEngine

    return LlamaCppEngine(model_dir, result.path, parallel=1, context_length=2048)


def reference_engine(model_dir: Path, trust_remote_code: bool = False) -> Engine:
    from kollm.engines.transformers_engine import TransformersEngine

    engine = TransformersEngine(model_dir, device="cpu", trust_remote_code=trust_remote_code)
    engine.load()
    return engine


def measure_against(
    reference: Engine, engine: Engine, version: ModelVersion | None
) -> dict[str, Any]:
    """`engine`'s figures against `reference` (both loaded) on the version's samples."""
    samples, source = version_samples(version, reference.tokenizer)
    figures = measure_conversion(reference, engine, samples)
    return {**figures, "sample": source, "reference": "transformers"}


def measure_export(
    model_dir: Path,
    result: Export,
    reference: Engine,
    version: ModelVersion | None = None,
    speed: bool = False,
) -> dict[str, Any]:
    """The export's figures against `reference` (the registered weights); with `speed`, its
    load time and greedy tokens/s on this machine too."""
    engine = converted_engine(model_dir, result)
    started = time.perf_counter()
    engine.load()
    loaded = time.perf_counter() - started
    try:
        figures = measure_against(reference, engine, version)
        if speed:
            figures.update(load_s=round(loaded, 2), tokens_per_s=_tokens_per_s(engine))
    finally:
        engine.unload()
    return figures


def conversion_measurer(registry: Registry | None = None, trust_remote_code: bool = False):
    """What the server calls to measure a conversion it loaded (`ModelManager.measure`):
    the registered weights on the transformers engine, against the loaded engine."""

    def measure(ref: str, model_dir: Path, engine: Engine) -> dict[str, Any]:
        version = (registry or Registry()).get(ref)
        reference = reference_engine(model_dir, trust_remote_code)
        try:
            return measure_against(reference, engine, version)
        finally:
            reference.unload()

    return measure


def _tokens_per_s(engine: Engine, n: int = 64) -> float:
    """Greedy tokens a second on one prompt, after a warm-up (the first call pays setup)."""
    engine.generate([SPEED_PROMPT], GenerationParams(max_new_tokens=2))
    started = time.perf_counter()
    (out,) = engine.generate([SPEED_PROMPT], GenerationParams(max_new_tokens=n))
    return round(out.completion_tokens / max(time.perf_counter() - started, 1e-9), 1)


def spec(kind: str) -> tuple[str, str]:
    """(format, quant) of a --compare entry: a CTranslate2 quantisation, else a GGUF one."""
    kind = kind.strip()
    return ("ct2", kind) if kind in CT2_QUANTS else ("gguf", kind.lower())


def compare(
    ref: str,
    kinds: list[str],
    out: Path,
    registry: Registry | None = None,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Export `ref` at each of `kinds`, measure each against the registered weights, and write
    `compare.json` and `compare.html` into `out`. A kind that cannot be made or run here
    (no llama-server, no llama-quantize) gets a row saying why."""
    registry = registry or Registry()
    source, version = resolve(ref, registry)
    rows = []
    with merged(source, trust_remote_code) as model_dir:
        reference = reference_engine(model_dir, trust_remote_code)
        try:
            sample = version_samples(version, reference.tokenizer)[1]
            rows.append(_reference_row(model_dir, reference))
            for kind in kinds:
                rows.append(_compare_one(ref, kind, out, registry, model_dir, reference, version))
        finally:
            reference.unload()
    report = {"model": version.ref if version else str(source), "sample": sample, "rows": rows}
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    (out / "compare.html").write_text(compare_html(report), encoding="utf-8")
    return report


def _reference_row(model_dir: Path, reference: Engine) -> dict[str, Any]:
    size = sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file())
    return {
        "kind": "reference (transformers)",
        "size_mb": round(size / 1e6, 1),
        "tokens_per_s": _tokens_per_s(reference),
        "ppl_ratio": 1.0,
        "token_agreement": 1.0,
        "answer_agreement": 1.0,
    }


def _compare_one(ref, kind, out, registry, model_dir, reference, version) -> dict[str, Any]:
    fmt, quant = spec(kind)
    try:
        result = export_model(ref, fmt, out, quant, registry)
        figures = measure_export(model_dir, result, reference, version, speed=True)
    except (ExportError, RuntimeError, OSError, ValueError) as err:
        return {"kind": kind, "error": str(err).splitlines()[0]}
    if version is not None:  # a registered version: the figures go with its export
        registry.set_export_quality(version.ref, result.sha256, figures)
    return {
        "kind": kind,
        "format": fmt,
        "path": str(result.path),
        "size_mb": round(result.size_bytes / 1e6, 1),
        **{k: figures.get(k) for k in ("load_s", "tokens_per_s", "ppl_ratio")},
        **{k: figures.get(k) for k in ("token_agreement", "answer_agreement")},
        "long_ppl_ratio": figures["long"].get("ppl_ratio"),
        "long_answer_agreement": figures["long"].get("answer_agreement"),
        "not_measured": figures.get("not_measured"),
    }


COLUMNS = (
    ("kind", "precision"),
    ("size_mb", "size (MB)"),
    ("load_s", "load (s)"),
    ("tokens_per_s", "tokens/s"),
    ("ppl_ratio", "ppl ratio"),
    ("long_ppl_ratio", "ppl ratio, long"),
    ("token_agreement", "next-token agreement"),
    ("answer_agreement", "answer agreement"),
    ("long_answer_agreement", "answer agreement, long"),
)


def _cell(value: Any) -> str:
    return "—" if value is None else str(value)


def compare_markdown(report: dict[str, Any]) -> str:
    """The table as Markdown (the form of docs/stages/cluster-tools.md)."""
    lines = ["| " + " | ".join(t for _, t in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in report["rows"]:
        if "error" in row:
            lines.append(f"| {row['kind']} | not made here: {row['error']} |")
        else:
            lines.append("| " + " | ".join(_cell(row.get(k)) for k, _ in COLUMNS) + " |")
    return "\n".join(lines)


def compare_html(report: dict[str, Any]) -> str:
    head = "".join(f"<th>{html.escape(t)}</th>" for _, t in COLUMNS)
    body = []
    for row in report["rows"]:
        if "error" in row:
            cells = f"<td>{html.escape(row['kind'])}</td><td colspan={len(COLUMNS) - 1}>"
            body.append(f"<tr>{cells}not made here: {html.escape(row['error'])}</td></tr>")
        else:
            cells = "".join(f"<td>{html.escape(_cell(row.get(k)))}</td>" for k, _ in COLUMNS)
            body.append(f"<tr>{cells}</tr>")
    title = html.escape(f"{report['model']}: precisions compared")
    return (
        f"<!doctype html><meta charset=utf-8><title>{title}</title><h1>{title}</h1>"
        f"<p>Against the registered weights on {html.escape(report['sample'])}.</p>"
        f"<table border=1><tr>{head}</tr>{''.join(body)}</table>\n"
    )
