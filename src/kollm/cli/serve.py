"""`kollm serve`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kollm.cli.common import (
    _load,
    app,
    console,
    fail,
)


def _pairs(values: list[str] | None, what: str) -> dict[str, str]:
    pairs = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep:
            fail(f"{what} {item!r}: expected NAME=VALUE")
        pairs[key] = value
    return pairs


def _access(
    api_key: str | None,
    api_key_file: Path | None,
    admin_key: str | None,
    adapter_root: Path | None = None,
):
    """Who may call the server: --api-key, the key file (with roles and names), the
    environment's KOLLM_API_KEY and KOLLM_ADMIN_KEY."""
    import os

    from kollm.serve.keys import KeyFileError, Keys, read_key_file
    from kollm.serve.server import Access

    try:
        keys = read_key_file(api_key_file) if api_key_file is not None else Keys()
    except KeyFileError as err:
        fail(str(err))
    api = [k for k in (api_key, os.environ.get("KOLLM_API_KEY")) if k] + keys.api_keys
    admin = [k for k in (admin_key, os.environ.get("KOLLM_ADMIN_KEY")) if k] + keys.admin_keys
    return Access(api, admin, adapter_root, keys.names)


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
        Path | None, typer.Option(help="Keys, one a line: KEY [viewer|admin] [NAME].")
    ] = None,
    no_log: Annotated[bool, typer.Option("--no-log", help="Log no requests.")] = False,
    max_batch: Annotated[int | None, typer.Option(help="Most requests a batch [8].")] = None,
    max_queue: Annotated[int | None, typer.Option(help="Most waiting per model [64].")] = None,
    timeout: Annotated[float | None, typer.Option(help="Request timeout in seconds [120].")] = None,
    max_body_mb: Annotated[
        float | None, typer.Option(help="Largest request body in MB; larger gets 413 [4].")
    ] = None,
    adapter: Annotated[
        list[str] | None, typer.Option(help="LoRA adapter NAME=DIR (transformers).")
    ] = None,
    domain: Annotated[
        list[str] | None,
        typer.Option(help="MODEL=FILE: keywords (one a line) of the model's domain."),
    ] = None,
    alias_poll: Annotated[float | None, typer.Option(help="Seconds between alias checks.")] = None,
    admin_key: Annotated[
        str | None,
        typer.Option(
            help="An admin key: the console's actions, adapter loading (also KOLLM_ADMIN_KEY)."
        ),
    ] = None,
    adapter_root: Annotated[
        Path | None,
        typer.Option(help="Directory that adapters loaded at run time by path must lie under."),
    ] = None,
    rag: Annotated[
        str | None,
        typer.Option(help="Answer every chat request from this collection, with citations."),
    ] = None,
    runs_dir: Annotated[
        Path | None, typer.Option(help="Recipe runs the console (/ui) shows [./runs].")
    ] = None,
) -> None:
    """Serve models over an OpenAI-compatible HTTP API."""
    import uvicorn

    from kollm.serve.server import build_server, resolve_config

    loaded = _load(recipe, None) if recipe is not None else None
    options = {
        "engine": engine,
        "host": host,
        "port": port,
        "max_batch": max_batch,
        "max_queue": max_queue,
        "request_timeout_s": timeout,
        "max_body_mb": max_body_mb,
        "alias_poll_s": alias_poll,
        "log_requests": False if no_log else None,
        "adapters": _pairs(adapter, "--adapter") or None,
        "rag": rag,
    }
    try:
        cfg = resolve_config(loaded, models or [], options, _pairs(domain, "--domain"))
    except ValueError as err:
        fail(str(err))
    access = _access(api_key, api_key_file, admin_key, adapter_root)
    # A model that cannot load stops the server (exit 2), not a 503 forever.
    rag_settings = loaded.rag if loaded is not None else None
    app, manager = build_server(
        cfg, None, access, load_before_ready=True, rag=rag_settings, runs_dir=runs_dir
    )
    try:
        manager.check_refs()
    except ValueError as err:
        fail(f"cannot serve: {err}")
    console.print(
        f"kollm serve: {', '.join(cfg.models)} with {cfg.engine} on http://{cfg.host}:{cfg.port}/v1"
        f" (console: http://{cfg.host}:{cfg.port}/ui)"
    )
    try:
        uvicorn.run(app, host=cfg.host, port=cfg.port)
    except SystemExit:
        if manager.failure:  # uvicorn exits 3 on a failed start-up; the reason is ours
            fail(f"cannot serve: {manager.failure}")
        raise


@app.command("ui")
def ui(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    api_key: Annotated[str | None, typer.Option(help="A viewer key (also KOLLM_API_KEY).")] = None,
    api_key_file: Annotated[
        Path | None, typer.Option(help="Keys, one a line: KEY [viewer|admin] [NAME].")
    ] = None,
    admin_key: Annotated[
        str | None, typer.Option(help="The key that may promote and roll back.")
    ] = None,
    runs_dir: Annotated[Path | None, typer.Option(help="Recipe runs to show [./runs].")] = None,
) -> None:
    """The web console alone, with no model served: runs, registry, feedback (/ui)."""
    import uvicorn

    from kollm.config import ServeConfig
    from kollm.serve.server import build_server

    access = _access(api_key, api_key_file, admin_key)
    app_, _ = build_server(ServeConfig(models=[]), None, access, runs_dir=runs_dir)
    console.print(f"kollm ui: http://{host}:{port}/ui")
    uvicorn.run(app_, host=host, port=port)
