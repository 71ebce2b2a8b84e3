"""`kollm serve`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from kollm.cli.common import (
    _load,
    app,
    console,
    fail,
    user_errors,
)
from kollm.config import Recipe


def _pairs(values: list[str] | None, what: str) -> dict[str, str]:
    pairs = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep:
            fail(f"{what} {item!r}: expected NAME=VALUE")
        pairs[key] = value
    return pairs


def _api_keys(api_key: str | None, api_key_file: Path | None) -> list[str]:
    import os

    keys = [api_key] if api_key else []
    if api_key_file is not None:
        keys += [line.strip() for line in api_key_file.read_text().splitlines() if line.strip()]
    if os.environ.get("KOLLM_API_KEY"):
        keys.append(os.environ["KOLLM_API_KEY"])
    return keys


def _admin_keys(admin_key: str | None) -> list[str]:
    import os

    return [k for k in (admin_key, os.environ.get("KOLLM_ADMIN_KEY")) if k]


def _guards(domains: dict) -> dict:
    from kollm.serve.service import DomainGuard

    guards = {}
    for model_id, d in domains.items():
        examples = []
        if d.examples_file:
            for line in Path(d.examples_file).read_text(encoding="utf-8").splitlines():
                line = line.strip()
                if line:
                    examples.append(
                        json.loads(line).get("text", "") if line.startswith("{") else line
                    )
        guards[model_id] = DomainGuard(d.keywords, examples, d.min_similarity, d.refusal)
    return guards


def serve_settings(recipe: Recipe | None, models: list[str], options: dict[str, Any]):
    """The recipe's `serve` section (or the defaults), overridden by the command line's options."""
    from kollm.config import DomainConfig, ServeConfig

    cfg = recipe.serve if recipe is not None else ServeConfig()
    domain_files = options.pop("domain_files", None)
    given = {k: v for k, v in options.items() if v is not None}
    if models:
        given["models"] = models
    cfg = cfg.model_copy(update=given)
    if not cfg.models and recipe is not None:
        alias = recipe.registry.alias
        cfg = cfg.model_copy(
            update={"models": [f"{recipe.model_name}@{alias}" if alias else recipe.model_name]}
        )
    if not cfg.models:
        fail("name the models to serve, or give --recipe")
    domains = dict(cfg.domains)
    for model_id, path in _pairs(domain_files, "--domain").items():
        words = [
            w.strip() for w in Path(path).read_text(encoding="utf-8").splitlines() if w.strip()
        ]
        domains[model_id] = DomainConfig(keywords=words)
    return cfg, domains


@app.command("serve")
def serve(
    models: Annotated[
        list[str] | None, typer.Argument(help="NAME@ALIAS, NAME:VERSION, NAME or a model dir.")
    ] = None,
    recipe: Annotated[
        Path | None, typer.Option(help="Take settings from this recipe's serve section.")
    ] = None,
    engine: Annotated[
        str | None, typer.Option(help="ctranslate2 (default), transformers or vllm.")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on [127.0.0.1].")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on [8000].")] = None,
    api_key: Annotated[
        str | None, typer.Option(help="Require this key (also KOLLM_API_KEY).")
    ] = None,
    api_key_file: Annotated[
        Path | None, typer.Option(help="File with one accepted key a line.")
    ] = None,
    no_log: Annotated[
        bool, typer.Option("--no-log", help="Do not log requests and answers.")
    ] = False,
    max_batch: Annotated[
        int | None, typer.Option(help="Most requests in one engine batch [8].")
    ] = None,
    max_queue: Annotated[
        int | None, typer.Option(help="Most requests waiting per model [64].")
    ] = None,
    timeout: Annotated[float | None, typer.Option(help="Request timeout in seconds [120].")] = None,
    adapter: Annotated[
        list[str] | None, typer.Option(help="LoRA adapter NAME=DIR (transformers).")
    ] = None,
    domain: Annotated[
        list[str] | None,
        typer.Option(help="MODEL=FILE: keywords (one a line) of the model's domain."),
    ] = None,
    alias_poll: Annotated[
        float | None, typer.Option(help="Seconds between alias checks [2].")
    ] = None,
    admin_key: Annotated[
        str | None,
        typer.Option(help="Key of POST /v1/load_lora_adapter and unload (also KOLLM_ADMIN_KEY)."),
    ] = None,
    adapter_root: Annotated[
        Path | None,
        typer.Option(help="Directory that adapters loaded at run time by path must lie under."),
    ] = None,
) -> None:
    """Serve models over an OpenAI-compatible HTTP API."""
    import uvicorn

    from kollm.serve.app import ServeSettings, create_app
    from kollm.serve.log import RequestLog
    from kollm.serve.metrics import ServerMetrics
    from kollm.serve.service import ModelManager

    loaded = _load(recipe, None) if recipe is not None else None
    options = {
        "engine": engine,
        "host": host,
        "port": port,
        "max_batch": max_batch,
        "max_queue": max_queue,
        "request_timeout_s": timeout,
        "alias_poll_s": alias_poll,
        "log_requests": False if no_log else None,
        "adapters": _pairs(adapter, "--adapter") or None,
    }
    with user_errors():
        cfg, domains = serve_settings(loaded, models or [], {**options, "domain_files": domain})
    manager = ModelManager(
        cfg.models,
        cfg.engine,
        ServerMetrics(),
        max_batch=cfg.max_batch,
        max_queue=cfg.max_queue,
        adapters=cfg.adapters,
        guards=_guards(domains),
        adapter_root=adapter_root,
    )
    settings = ServeSettings(
        api_keys=_api_keys(api_key, api_key_file),
        admin_keys=_admin_keys(admin_key),
        request_timeout_s=cfg.request_timeout_s,
        log_requests=cfg.log_requests,
        alias_poll_s=cfg.alias_poll_s,
        load_before_ready=True,  # a model that cannot load stops the server (exit 2)
    )
    try:
        manager.check_refs()
    except ValueError as err:
        fail(f"cannot serve: {err}")
    console.print(
        f"kollm serve: {', '.join(cfg.models)} with {cfg.engine} on http://{cfg.host}:{cfg.port}/v1"
    )
    try:
        uvicorn.run(
            create_app(manager, settings, RequestLog() if cfg.log_requests else None),
            host=cfg.host,
            port=cfg.port,
        )
    except SystemExit:
        if manager.failure:  # uvicorn exits 3 on a failed start-up; the reason is ours
            fail(f"cannot serve: {manager.failure}")
        raise
