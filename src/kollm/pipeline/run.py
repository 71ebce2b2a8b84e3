"""`kollm run`: data -> train -> eval -> register; unchanged stages are skipped.

A stage's fingerprint is a hash of its recipe section and of what it reads (input files, the
data manifest, the model weights); it is stored in `stage.json` beside the stage's outputs and
compared on the next run. `force` runs every stage.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kollm.artifacts import weights_sha256
from kollm.config import Recipe
from kollm.data.io import write_json
from kollm.registry import ModelVersion, Registry

log = logging.getLogger("kollm.run")
Advance = Callable[[int], None]
ProgressFactory = Callable[[str, int | None], Any]
DATA_WAIT_S = 3600.0


@dataclass
class StageOutcome:
    name: str
    skipped: bool
    summary: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class RunResult:
    recipe: Recipe
    stages: list[StageOutcome] = field(default_factory=list)
    version: ModelVersion | None = None

    def stage(self, name: str) -> StageOutcome | None:
        return next((s for s in self.stages if s.name == name), None)

    def add(self, run: Callable[[], StageOutcome], name: str) -> StageOutcome:
        """Run one stage, timed, with a log line before and after."""
        log.info("%s: starting", name)
        started = time.monotonic()
        outcome = run()
        outcome.seconds = time.monotonic() - started
        how = "skipped (unchanged)" if outcome.skipped else "done"
        log.info("%s: %s in %.1f s", name, how, outcome.seconds)
        self.stages.append(outcome)
        return outcome


def _sha(*parts: Any) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def file_sha(path: Path) -> str:
    """sha256 of a file, or of a directory's files and names."""
    if path.is_dir():
        return _sha(
            sorted(
                (p.relative_to(path).as_posix(), file_sha(p))
                for p in path.rglob("*")
                if p.is_file()
            )
        )
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fresh(stage_dir: Path, fingerprint: str, outputs: list[Path]) -> bool:
    marker = stage_dir / "stage.json"
    if not marker.exists() or not all(p.exists() for p in outputs):
        return False
    return json.loads(marker.read_text()).get("fingerprint") == fingerprint


def _mark(stage_dir: Path, fingerprint: str, summary: dict[str, Any]) -> None:
    write_json(stage_dir / "stage.json", {"fingerprint": fingerprint, "summary": summary})


def _stored_summary(stage_dir: Path) -> dict[str, Any]:
    return json.loads((stage_dir / "stage.json").read_text())["summary"]


def process_rank() -> int:
    """This process's rank under torchrun or accelerate (both set RANK); 0 alone."""
    return int(os.environ.get("RANK", "0"))


def _wait_fresh(out: Path, fingerprint: str, outputs: list[Path]) -> None:
    """On a rank above 0: wait for rank 0's data stage (torchrun ends every rank when one
    fails, so the wait ends too)."""
    deadline = time.monotonic() + DATA_WAIT_S
    while not _fresh(out, fingerprint, outputs):
        if time.monotonic() > deadline:
            raise TimeoutError(f"rank {process_rank()}: rank 0 wrote no data into {out}")
        time.sleep(1)


def data_stage(recipe: Recipe, force: bool, advance: Advance | None) -> StageOutcome:
    """Prepare the data unless its recipe section and inputs are unchanged. Under torchrun or
    accelerate only rank 0 prepares it; the other ranks wait for it and train on it."""
    from kollm.data.pipeline import prepare

    cfg = recipe.data
    sources = cfg.input_files
    fingerprint = _sha(cfg.model_dump(), {k: file_sha(Path(v)) for k, v in sources.items()})
    out = recipe.data_dir
    outputs = [out / "stats.json", out / "train.jsonl"]
    if process_rank() > 0:
        _wait_fresh(out, fingerprint, outputs)
        return StageOutcome("data", True, _stored_summary(out))
    if not force and _fresh(out, fingerprint, outputs):
        return StageOutcome("data", True, _stored_summary(out))
    stats = prepare(cfg, out, advance).stats
    _mark(out, fingerprint, stats)
    return StageOutcome("data", False, stats)


def train_stage(recipe: Recipe, force: bool, resume: bool = False) -> StageOutcome:
    """Train unless the model, train section and data are unchanged."""
    from kollm.train import run_training

    manifest = json.loads((recipe.data_dir / "stats.json").read_text())["manifest_sha256"]
    fingerprint = _sha(
        recipe.model.model_dump(), recipe.train.model_dump(), recipe.data.kind, manifest
    )
    out = recipe.train_dir
    if not force and _fresh(out, fingerprint, [out / "model"]):
        return StageOutcome("train", True, _stored_summary(out))
    summary = run_training(recipe, resume=resume).summary()
    _mark(out, fingerprint, summary)
    return StageOutcome("train", False, summary)


def eval_stage(recipe: Recipe, force: bool, advance: Advance | None) -> StageOutcome:
    """Evaluate unless the eval section, weights and split are unchanged."""
    from kollm.eval.evaluate import evaluate_recipe

    cfg = recipe.eval
    model_dir = recipe.train_dir / "model"
    data_file = recipe.split_path(cfg.split)
    fingerprint = _sha(cfg.model_dump(), weights_sha256(model_dir), file_sha(data_file))
    out = recipe.eval_dir
    if not force and _fresh(out, fingerprint, [out / "metrics.json"]):
        return StageOutcome("eval", True, _stored_summary(out))
    result = evaluate_recipe(recipe, model_dir, out, advance)
    _mark(out, fingerprint, result.metrics)
    return StageOutcome("eval", False, result.metrics)


def register_stage(
    recipe: Recipe, recipe_text: str, registry: Registry
) -> tuple[StageOutcome, ModelVersion]:
    """Register the trained model unless its weights and recipe are already the latest version."""
    model_dir = recipe.train_dir / "model"
    name = recipe.model_name
    existing = registry.list(name)
    sha = weights_sha256(model_dir)
    recipe_sha = hashlib.sha256(recipe_text.encode()).hexdigest()
    if existing and existing[-1].weights_sha256 == sha and existing[-1].recipe_sha256 == recipe_sha:
        version = existing[-1]
        skipped = True
    else:
        metrics_path = recipe.eval_dir / "metrics.json"
        metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
        stats = json.loads((recipe.data_dir / "stats.json").read_text())
        parent = None
        if recipe.registry.alias:
            try:
                parent = registry.get(f"{name}@{recipe.registry.alias}").version
            except ValueError:
                parent = None
        version = registry.register(
            name,
            model_dir,
            base_model=recipe.model.base,
            method=recipe.train.method,
            data_manifest=stats["manifest_sha256"],
            recipe_text=recipe_text,
            metrics=_headline(metrics),
            parent_version=parent,
            lineage=base_lineage(recipe.model.base),
        )
        skipped = False
    if recipe.registry.alias and recipe.registry.alias not in version.aliases:
        version = registry.promote(name, version.version, recipe.registry.alias)
    return StageOutcome(
        "register", skipped, {"ref": version.ref, "aliases": version.aliases}
    ), version


def base_lineage(base: str) -> dict[str, Any] | None:
    """The lineage a local base dir carries: its vocabulary extension (kollm_vocab.json)."""
    from kollm.train.vocab import LINEAGE_FILE

    path = Path(base) / LINEAGE_FILE
    if not path.is_file():
        return None
    return {"vocabulary": json.loads(path.read_text(encoding="utf-8"))}


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """The metrics a version records: the model's ROUGE and score, the baseline's, perplexity."""
    out = dict(metrics.get("model", {}))
    if "baseline_lead" in metrics:
        out["baseline_score"] = metrics["baseline_lead"]["score"]
    if "perplexity" in metrics:
        out["perplexity"] = metrics["perplexity"]
    return out


def run_recipe(
    recipe: Recipe,
    recipe_text: str,
    force: bool = False,
    registry: Registry | None = None,
    progress: ProgressFactory | None = None,
) -> RunResult:
    """Every stage the recipe has, in order."""
    result = RunResult(recipe)
    if recipe.data is None:
        raise ValueError("the recipe has no 'data' section")

    def bar(description: str, total: int | None):
        return progress(description, total) if progress else _no_progress()

    with bar("data: reading and cleaning", None) as advance:
        result.add(lambda: data_stage(recipe, force, advance), "data")
    if recipe.train is None:
        return result
    result.add(lambda: train_stage(recipe, force), "train")
    if process_rank() > 0:  # one process evaluates and registers, or registrations race
        return result
    if recipe.eval is not None:
        with bar("eval: generating", recipe.eval.max_samples) as advance:
            result.add(lambda: eval_stage(recipe, force, advance), "eval")
    if recipe.registry.enabled:
        registry = registry or Registry()

        def register() -> StageOutcome:
            outcome, result.version = register_stage(recipe, recipe_text, registry)
            return outcome

        result.add(register, "register")
    return result


class _no_progress:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
