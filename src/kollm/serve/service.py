"""The models a server holds: resolving references, loading engines, readiness, alias watch.

A reference is `NAME@ALIAS`, `NAME:VERSION`, `NAME` (latest) or a model dir. The API id of a
registered model is its name; `NAME:VERSION` reaches that version too. Each engine answers a
fixed sanity prompt before the server reports ready. An alias that moves in the registry is
picked up by a watch task: the new version loads beside the old, then takes its place.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kollm.config import DomainConfig, TaskConfig
from kollm.engines.base import Engine, GenerationParams
from kollm.engines.quality import QualityLimit, quality_loss
from kollm.prompts import Messages, PromptFormat, load_format, request_prompt
from kollm.registry import Registry, RegistryError
from kollm.serve.batching import Batcher, Dispatcher
from kollm.serve.metrics import ServerMetrics
from kollm.tasks import recorded_tasks, task_layers

log = logging.getLogger("kollm.serve")
SANITY_PROMPT = "안녕하세요"


class ConversionRefused(ValueError):
    """A conversion that loses more than `serve.max_quality_loss` against its weights."""


class AdapterError(ValueError):
    """An adapter that cannot be loaded or unloaded; the message names the field."""


@dataclass
class DomainGuard:
    """Declines requests outside a model's domain. A request passes when it holds one of
    `keywords`, or when its embedding is within `min_similarity` (cosine) of the centroid of
    the domain's example requests; with neither configured, everything passes."""

    keywords: list[str] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)
    min_similarity: float = 0.5
    refusal: str = "죄송합니다. 이 서비스는 해당 업무에 관한 질문에만 답변드릴 수 있습니다."
    centroid: list[float] | None = None

    def prepare(self, engine: Engine) -> None:
        """Embed the domain examples once, at model load."""
        if self.examples:
            vectors = engine.embed(self.examples)
            mean = [sum(col) / len(vectors) for col in zip(*vectors, strict=True)]
            norm = sum(x * x for x in mean) ** 0.5 or 1.0
            self.centroid = [x / norm for x in mean]

    def allows(self, text: str, engine: Engine | None = None) -> bool:
        if not self.keywords and self.centroid is None:
            return True
        if any(k in text for k in self.keywords):
            return True
        if self.centroid is not None and engine is not None:
            (vector,) = engine.embed([text])  # L2-normalised, so the dot product is the cosine
            return (
                sum(a * b for a, b in zip(vector, self.centroid, strict=True))
                >= self.min_similarity
            )
        return False


def guard_for(d: DomainConfig) -> DomainGuard:
    """The guard of a domain, its example requests read from their file."""
    examples = []
    if d.examples_file:
        for line in Path(d.examples_file).read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line:
                examples.append(json.loads(line).get("text", "") if line.startswith("{") else line)
    return DomainGuard(d.keywords, examples, d.min_similarity, d.refusal)


@dataclass
class ServedModel:
    model_id: str  # the API id: the registry name, or the dir name
    ref: str  # what the server was started with
    version: str  # NAME:VERSION, or the dir
    model_dir: Path
    engine: Engine
    batcher: Batcher
    adapters: dict[str, str] = field(default_factory=dict)  # API id suffix -> adapter name
    prompt_format: PromptFormat | None = None
    guard: DomainGuard | None = None
    tasks: dict[str, TaskConfig] = field(default_factory=dict)  # MODEL/TASK, by task name
    task_guards: dict[str, DomainGuard] = field(default_factory=dict)  # tasks with a domain

    def prompt_for(
        self,
        messages: Messages,
        tools: list[dict] | None = None,
        template_kwargs: dict | None = None,
    ) -> str:
        """The prompt for a chat request, in the format the version was trained with (its
        chat template when the request brings tools)."""
        tokenizer = self.engine.tokenizer
        return request_prompt(self.prompt_format, messages, tokenizer, tools, template_kwargs)


class ModelManager:
    def __init__(
        self,
        refs: list[str],
        engine_kind: str,
        metrics: ServerMetrics,
        registry: Registry | None = None,
        max_batch: int = 8,
        max_queue: int = 64,
        adapters: dict[str, str] | None = None,
        max_concurrency: int | None = None,
        guards: dict[str, DomainGuard] | None = None,
        engine_options: dict[str, Any] | None = None,
        adapter_root: Path | str | None = None,
        prepare: Callable[[str, Path, dict[str, str]], dict[str, Any]] | None = None,
        tasks: dict[str, TaskConfig] | None = None,
        quality_limit: QualityLimit | None = None,
        measure: Callable[[str, Path, Engine], dict[str, Any]] | None = None,
    ) -> None:
        self.refs, self.engine_kind, self.metrics = refs, engine_kind, metrics
        self.quality_limit = quality_limit  # None: conversions are served unmeasured
        # measure(version, model_dir, engine): a conversion's figures against its weights,
        # given by the CLI like `prepare` (the export stage's measurement, above the server)
        self.measure = measure
        self.registry = registry
        self.max_batch, self.max_queue = max_batch, max_queue
        self.max_concurrency = max_concurrency  # None: the engine's own limit
        self.adapters = adapters or {}
        self.guards = guards or {}
        self.tasks = tasks or {}  # the serving recipe's, over the shipped and the version's
        self.engine_options = engine_options or {}
        self.adapter_root = Path(adapter_root).resolve() if adapter_root else None
        # per version, the engine's files made from it (the llamacpp engine's GGUF): given by
        # the CLI, since making them is the export stage's work, above the server
        self.prepare = prepare
        self.models: dict[str, ServedModel] = {}
        self.ready = False
        self.failure: str | None = None
        metrics.watch_engines(self._engine_restarts)

    def _engine_restarts(self) -> dict[str, int]:
        health = {m.model_id: m.engine.health() for m in list(self.models.values())}
        return {model: h["restarts"] for model, h in health.items() if "restarts" in h}

    def _resolve(self, ref: str) -> tuple[str, str, Path, str | None, PromptFormat | None, dict]:
        """(model id, version, dir, sha256, prompt format, tasks recorded with the version) of
        a reference."""
        path = Path(ref)
        if path.is_dir():
            return path.name, str(path), path, None, load_format(path), {}
        registry = self.registry or Registry()
        try:
            version = registry.checkout(ref)  # the stored files, checked against their sha256
        except RegistryError as err:
            raise ValueError(f"{ref}: {err}") from err
        return (
            version.name,
            version.ref,
            Path(version.artifact_path),
            version.weights_sha256,
            version.format,
            recorded_tasks(version.recipe_text),
        )

    def check_refs(self) -> None:
        """Fail fast on a reference that names nothing (an unknown model, alias or dir)."""
        for ref in self.refs:
            if Path(ref).is_dir():
                continue
            if ("/" in ref or ref.startswith(".")) and not Path(ref).exists():
                raise ValueError(f"{ref}: no such model dir")
            try:
                (self.registry or Registry()).get(ref)
            except RegistryError as err:
                raise ValueError(f"{ref}: {err}") from err
        for ref in self.refs:
            self._check_remote(ref)
            self._check_engine(ref)

    def _check_remote(self, ref: str) -> None:
        """Refuse a model that needs remote code when the server was not given the flag."""
        from kollm.remote import RemoteCodeRefused, dir_kwargs

        try:
            dir_kwargs(self._resolve(ref)[2], bool(self.engine_options.get("trust_remote_code")))
        except RemoteCodeRefused as err:
            raise ValueError(f"{ref}: {err}") from err

    def _check_engine(self, ref: str) -> None:
        """Refuse before loading what the engine cannot run (CTranslate2 has no loader for
        every architecture), naming the engine that can."""
        if self.engine_kind != "ctranslate2":
            return
        from kollm.engines.ctranslate2_engine import check_convertible

        check_convertible(self._resolve(ref)[2])

    def _open_engine(
        self, ref: str, model_dir: Path, sha256: str | None, version: str | None = None
    ) -> Engine:
        from kollm.engines import open_engine, refuse_unmergeable

        adapters = {name: self._startup_adapter(src) for name, src in self.adapters.items()}
        refuse_unmergeable(self.engine_kind, model_dir, adapters)  # before any GGUF is made
        options = dict(self.engine_options)
        if self.engine_kind == "ctranslate2" and sha256 is not None and version is not None:
            options.update(self._recorded_conversion(version, options.get("quantization")))
        if self.prepare is not None:
            options.update(self.prepare(ref, model_dir, adapters))
            adapters = options.pop("adapters", adapters)
        return open_engine(self.engine_kind, model_dir, adapters=adapters, sha256=sha256, **options)

    def _recorded_conversion(self, version: str, quantization: str | None) -> dict[str, Any]:
        """The CTranslate2 engine's options that make it check its cached conversion of a
        registered version against the sha256 recorded in the version's exports."""
        quantization = quantization or "int8"
        rows = [
            row
            for row in (self.registry or Registry()).exports(version)
            if (row["format"], row["quant"]) == ("ct2", quantization) and row["detail"].get("cache")
        ]
        recorded = rows[-1]["sha256"] if rows else None
        return {"conversion_sha256": recorded, "verify_conversion": True}

    def _record_conversion(self, version: str, engine: Engine) -> None:
        """Record a conversion the engine made (or found changed and made again) in the
        version's exports, so the next load can check it."""
        made = getattr(engine, "conversion_sha256", None)
        if made is None or made == getattr(engine, "expected_conversion", None):
            return
        path = engine.conversion
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        (self.registry or Registry()).add_export(
            version, "ct2", path, made, size, quant=engine.quantization, cache=True
        )
        log.info("%s: recorded its CTranslate2 conversion %s (sha256 %s)", version, path, made[:12])

    def _check_quality(self, version: str, model_dir: Path, engine: Engine) -> None:
        """Refuse a conversion past `quality_limit`. A CTranslate2 conversion is measured
        (`measure`) once, when no figures are stored with it; a GGUF is
        judged by the figures `kollm export` stored with it (llama-server gives no prompt
        log-probabilities to measure perplexity at load)."""
        if self.quality_limit is None or getattr(engine, "is_encoder_decoder", False):
            return  # an encoder-decoder has no prompt log-probabilities to compare
        registry = self.registry or Registry()
        sha = getattr(engine, "conversion_sha256", None)
        if sha is None and getattr(engine, "gguf", None) is not None:
            from kollm.artifacts import file_sha256

            sha = file_sha256(engine.gguf)
        if sha is None:
            return
        figures = registry.export_quality(version, sha)
        if figures is None and self.measure and getattr(engine, "conversion", None):
            figures = self.measure(version, model_dir, engine)
            registry.set_export_quality(version, sha, figures)
        why = quality_loss(figures, self.quality_limit) if figures else None
        if why:
            raise ConversionRefused(_refusal(version, engine, why))

    def _startup_adapter(self, source: str) -> str:
        """An adapter given at start: a directory, or a registered version (sha-checked)."""
        if Path(source).is_dir():
            return source
        try:
            return (self.registry or Registry()).checkout(source).artifact_path
        except RegistryError as err:
            raise ValueError(f"adapter {source!r}: not a directory, and {err}") from err

    def load(self, ref: str) -> ServedModel:
        """Load one model and check it answers (runs in a worker thread)."""
        model_id, version, model_dir, sha, fmt, recorded = self._resolve(ref)
        engine = self._open_engine(ref, model_dir, sha, version if sha else None)
        engine.load()
        if sha is not None:
            self._record_conversion(version, engine)
            self._check_quality(version, model_dir, engine)
        answer = engine.generate([SANITY_PROMPT], GenerationParams(max_new_tokens=4))
        if len(answer) != 1:
            raise RuntimeError(f"{ref}: the sanity prompt got no answer")
        guard = self.guards.get(model_id)
        if guard is not None:
            guard.prepare(engine)
        tasks = task_layers(recorded, self.tasks)
        task_guards = {name: guard_for(t.domain) for name, t in tasks.items() if t.domain}
        for task_guard in task_guards.values():
            task_guard.prepare(engine)
        batcher = self._scheduler(engine, model_id)
        return ServedModel(
            model_id,
            ref,
            version,
            model_dir,
            engine,
            batcher,
            {name: name for name in self.adapters},
            fmt,
            self.guards.get(model_id),
            tasks,
            task_guards,
        )

    def _scheduler(self, engine: Engine, model_id: str) -> Batcher:
        """A dispatcher for an engine that batches its own sequences as they come; a static
        batcher for the others."""
        if engine.capabilities.self_scheduling:
            return Dispatcher(engine, model_id, self.metrics, self.max_concurrency, self.max_queue)
        return Batcher(engine, model_id, self.metrics, self.max_batch, self.max_queue)

    async def start(self) -> None:
        try:
            for ref in self.refs:
                served = await asyncio.to_thread(self.load, ref)
                if (
                    served.model_id in self.models
                ):  # a second version of one name: its id is NAME:VERSION
                    served.model_id = served.batcher.model_name = served.version
                served.batcher.start()
                self.models[served.model_id] = served
                log.info("serving %s as %s (%s)", ref, served.model_id, served.version)
            self.ready = True
        except Exception as err:  # the server stays up and says why in /health
            self.failure = f"{type(err).__name__}: {err}"
            log.exception("loading models failed")

    def lookup(self, model: str) -> tuple[ServedModel, str | None] | None:
        """(served model, adapter) for an API model id: `name`, `name:VERSION`, `name:adapter`."""
        if model in self.models:
            return self.models[model], None
        name, _, suffix = model.partition(":")
        served = self.models.get(name)
        if served is None:
            return None
        if suffix in served.adapters:
            return served, served.adapters[suffix]
        if served.version == model:
            return served, None
        return None

    # --- adapters loaded while serving ---------------------------------------------------------

    def _adapter_dir(self, source: str) -> Path:
        """A registered adapter version (`NAME:VERSION`, `NAME@ALIAS`), or a dir under the
        adapter root; `..`, links out of the root and other paths are refused."""
        registry = self.registry or Registry()
        try:
            return Path(registry.checkout(source).artifact_path)
        except RegistryError as err:
            if "no model named" not in str(err) and "invalid model reference" not in str(err):
                raise AdapterError(f"lora_path: {err}") from None
        if self.adapter_root is None:
            raise AdapterError(
                f"lora_path: {source!r} is not a registered version, and the server has no "
                "--adapter-root to load directories from"
            )
        path = (self.adapter_root / source).resolve()  # follows links and `..`
        if not path.is_relative_to(self.adapter_root):
            raise AdapterError(f"lora_path: {source!r} is outside the adapter root")
        if not (path / "adapter_config.json").is_file():
            raise AdapterError(f"lora_path: {source!r} is not a PEFT adapter dir")
        return path

    def _adapter_host(self, base: str | None) -> ServedModel:
        hosts = [m for m in self.models.values() if m.engine.capabilities.runtime_adapters]
        if base is not None:
            hosts = [m for m in hosts if m.model_id == base]
        if len(hosts) != 1:
            what = f"'{base}' is not" if base else "no single model is"
            raise AdapterError(f"base_model: {what} served by the transformers engine here")
        return hosts[0]

    async def load_adapter(self, name: str, source: str, base: str | None = None) -> str:
        """Load an adapter onto a served base; returns its API id `BASE:NAME`."""
        served = self._adapter_host(base)
        if name in served.adapters:
            raise AdapterError(f"lora_name: '{name}' is already loaded on {served.model_id}")
        path = await asyncio.to_thread(self._adapter_dir, source)
        try:
            await asyncio.to_thread(served.engine.load_adapter, name, path)
        except Exception as err:  # a PEFT dir for another base fails here
            raise AdapterError(f"lora_path: cannot load {source!r}: {err}") from None
        served.adapters[name] = name
        log.info("adapter %s loaded on %s from %s", name, served.model_id, path)
        return f"{served.model_id}:{name}"

    async def unload_adapter(self, name: str, base: str | None = None) -> str:
        served = self._adapter_host(base)
        if name not in served.adapters:
            raise AdapterError(f"lora_name: no adapter '{name}' on {served.model_id}")
        await asyncio.to_thread(served.engine.unload_adapter, name)
        del served.adapters[name]
        return f"{served.model_id}:{name}"

    async def watch_aliases(self, interval_s: float) -> None:
        """Reload a model whose alias now points at another version."""
        while True:
            await asyncio.sleep(interval_s)
            for served in list(self.models.values()):
                if "@" not in served.ref:
                    continue
                try:  # the number only: the files are checked when the new version loads
                    registry = self.registry or Registry()
                    name, number = await asyncio.to_thread(registry.resolve, served.ref)
                except RegistryError:
                    continue
                if f"{name}:{number}" == served.version:
                    continue
                try:
                    await self.reload(served)
                except ValueError as err:  # its files or base changed: keep the old, say why
                    log.warning("%s stays on %s: %s", served.model_id, served.version, err)

    async def reload(self, old: ServedModel) -> None:
        fresh = await asyncio.to_thread(self.load, old.ref)
        fresh.model_id = fresh.batcher.model_name = old.model_id
        fresh.batcher.start()
        self.models[fresh.model_id] = fresh
        log.info("%s now serves %s (was %s)", fresh.model_id, fresh.version, old.version)
        await old.batcher.close()
        old.engine.unload()

    async def close(self) -> None:
        """Finish the requests in flight, then unload every engine (a vLLM engine's server
        process goes with it)."""
        self.ready = False
        for served in self.models.values():
            await served.batcher.close()
            await asyncio.to_thread(served.engine.unload)


def _refusal(version: str, engine: Engine, why: str) -> str:
    what = getattr(engine, "gguf", None) or getattr(engine, "conversion", None)
    quant = getattr(engine, "quantization", None) or "GGUF"
    return (
        f"{version}: its {engine.name} {quant} conversion {what} loses too much against the"
        f" registered weights: {why}. Serve it anyway with --allow-quality-loss, raise"
        " serve.max_quality_loss, or serve a finer precision (--engine transformers, or"
        " a GGUF at q8_0/f16); the figures: `kollm registry show`"
    )
