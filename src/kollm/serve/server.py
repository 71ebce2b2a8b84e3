"""One way to assemble a server: `build_server(config, registry)`, used by `kollm serve`, the
Ray Serve replica and the demo; `build_manager` is the same models without HTTP, for batch."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI
from pydantic import ValidationError

from kollm.config import DomainConfig, RagConfig, ServeConfig, format_validation_error
from kollm.engines import choose_engine
from kollm.engines.quality import QualityLimit
from kollm.feedback.responses import RequestLog
from kollm.registry import Registry, RegistryError
from kollm.serve.app import create_app
from kollm.serve.deps import ServeSettings
from kollm.serve.metrics import ServerMetrics
from kollm.serve.retrieval import RagService
from kollm.serve.service import DomainGuard, ModelManager, guard_for

log = logging.getLogger("kollm.serve")


@dataclass
class Access:
    """Who may call the server, and what it may load at run time."""

    api_keys: list[str] = field(default_factory=list)
    admin_keys: list[str] = field(default_factory=list)
    adapter_root: Path | str | None = None
    key_names: dict[str, str] = field(default_factory=dict)
    secret: bytes | None = None  # signs console logins and forms (None: from the keys)


def domain_guards(domains: dict[str, DomainConfig]) -> dict[str, DomainGuard]:
    """The guard of each model id, its example requests read from their file."""
    return {model_id: guard_for(d) for model_id, d in domains.items()}


def _engine_options(cfg: ServeConfig) -> dict:
    # every engine takes the flag: each refuses by name a model that needs it without it
    remote = {"trust_remote_code": True} if cfg.trust_remote_code else {}
    if cfg.engine == "ctranslate2":
        return {"prefix_cache": cfg.prefix_cache, **remote}
    if cfg.engine == "vllm" and cfg.max_concurrency:
        return {"max_num_seqs": cfg.max_concurrency, **remote}
    if cfg.engine == "llamacpp" and cfg.max_concurrency:
        return {"parallel": cfg.max_concurrency, **remote}
    return remote


def build_manager(
    cfg: ServeConfig,
    registry: Registry | None = None,
    access: Access | None = None,
    prepare: Callable | None = None,
    measure: Callable | None = None,
) -> ModelManager:
    """The models of `cfg` with their engine, batchers, adapters and domain guards."""
    return ModelManager(
        list(cfg.models),
        cfg.engine,
        ServerMetrics(),
        registry=registry,
        max_batch=cfg.max_batch,
        max_queue=cfg.max_queue,
        max_concurrency=cfg.max_concurrency,
        adapters=dict(cfg.adapters),
        guards=domain_guards(cfg.domains),
        adapter_root=access.adapter_root if access else None,
        engine_options=_engine_options(cfg),
        prepare=prepare,
        tasks=dict(cfg.tasks),
        quality_limit=quality_limit(cfg),
        measure=measure,
    )


def quality_limit(cfg: ServeConfig) -> QualityLimit | None:
    """The loss a served conversion may have; None when it is not measured. Allowed past it,
    it is still measured (and the figures stored), just not refused."""
    if cfg.max_quality_loss is None:
        return None
    if cfg.allow_quality_loss:
        return QualityLimit(float("inf"))
    return QualityLimit(cfg.max_quality_loss, cfg.min_token_agreement)


def model_dirs(refs: list[str], registry: Registry) -> list[Path]:
    """The directories of the references that resolve (a bad one fails later, by name)."""
    dirs = []
    for ref in refs:
        if Path(ref).is_dir():
            dirs.append(Path(ref))
            continue
        with contextlib.suppress(RegistryError):
            dirs.append(Path(registry.get(ref).artifact_path))
    return dirs


def engine_choice(
    cfg: ServeConfig, registry: Registry | None = None, needs: tuple[str, ...] = ()
) -> tuple[ServeConfig, str]:
    """`cfg` with `engine: auto` made the engine it picks here (see
    kollm.engines.choose_engine), and why."""
    if cfg.engine != "auto":
        return cfg, "as asked"
    dirs = model_dirs(list(cfg.models), registry or Registry())
    engine, why = choose_engine("auto", dirs, needs)
    return cfg.model_copy(update={"engine": engine}), why


def build_server(
    cfg: ServeConfig,
    registry: Registry | None = None,
    access: Access | None = None,
    load_before_ready: bool = False,
    on_ready: Callable[[], None] | None = None,
    rag: RagConfig | None = None,
    runs_dir: Path | None = None,
    prepare: Callable | None = None,
    measure: Callable | None = None,
) -> tuple[FastAPI, ModelManager]:
    """The OpenAI-compatible app for `cfg`, and the manager of its models; `rag` holds the
    retrieval settings (the recipe's `rag` section) for `cfg.rag` and for requests that
    name a collection; `prepare` makes an engine's files from a version (llamacpp's GGUF);
    `measure` measures a conversion against its weights (kollm.cluster.quality)."""
    registry = registry or Registry()
    access = access or Access()
    if cfg.engine == "auto" and prepare is None:
        # llamacpp serves the GGUF that `prepare` makes (the export stage, above serve):
        # a caller that gives none (a Ray Serve replica) serves with CTranslate2
        cfg = cfg.model_copy(update={"engine": "ctranslate2"})
    cfg, _ = engine_choice(cfg, registry)
    manager = build_manager(cfg, registry, access, prepare, measure)
    settings = ServeSettings(
        api_keys=list(access.api_keys),
        admin_keys=list(access.admin_keys),
        request_timeout_s=cfg.request_timeout_s,
        max_body_mb=cfg.max_body_mb,
        log_requests=cfg.log_requests,
        alias_poll_s=cfg.alias_poll_s,
        load_before_ready=load_before_ready,
        on_ready=on_ready,
        runs_dir=runs_dir,
        key_names=dict(access.key_names),
        secret=access.secret,
        session_s=cfg.session_hours * 3600,
        feedback_per_key_per_hour=cfg.feedback_per_key_per_hour,
        tool_parser=cfg.tool_parser,
        unconstrained_json=cfg.unconstrained_json,
    )
    request_log = (
        RequestLog(registry.home, cfg.log_max_kb, cfg.log_retention_days)
        if cfg.log_requests
        else None
    )
    if request_log is not None and request_log.problem:
        log.warning("serving without a request log (/health: degraded): %s", request_log.problem)
    retrieval = RagService(rag, cfg.rag, registry.home)
    return create_app(manager, settings, request_log, retrieval), manager


def resolve_config(
    recipe, models: list[str], options: dict, domain_files: dict[str, str] | None = None
) -> ServeConfig:
    """The recipe's `serve` section (or the defaults), overridden by the given options; with no
    models named, the recipe's model at `registry.alias`. `domain_files` maps a model id to a
    file of keywords, one a line."""
    cfg = recipe.serve if recipe is not None else ServeConfig()
    given = {k: v for k, v in options.items() if v is not None}
    if recipe is not None and recipe.model.trust_remote_code:  # the recipe opted in already
        given.setdefault("trust_remote_code", True)
    if models:
        given["models"] = models
    try:  # the options are checked as the recipe's serve section is
        cfg = ServeConfig.model_validate({**cfg.model_dump(), **given})
    except ValidationError as err:
        raise ValueError(format_validation_error("serve", err, ServeConfig)) from None
    if not cfg.models and recipe is not None:
        alias = recipe.registry.alias
        cfg = cfg.model_copy(
            update={"models": [f"{recipe.model_name}@{alias}" if alias else recipe.model_name]}
        )
    if not cfg.models:
        raise ValueError("name the models to serve, or give --recipe")
    domains = dict(cfg.domains)
    for model_id, path in (domain_files or {}).items():
        words = [w.strip() for w in Path(path).read_text(encoding="utf-8").splitlines()]
        domains[model_id] = DomainConfig(keywords=[w for w in words if w])
    return cfg.model_copy(update={"domains": domains})
