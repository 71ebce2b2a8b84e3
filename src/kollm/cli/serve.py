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
    no_log: Annotated[bool, typer.Option("--no-log", help="Log no requests.")] = False,
    max_batch: Annotated[int | None, typer.Option(help="Most requests a batch [8].")] = None,
    max_queue: Annotated[int | None, typer.Option(help="Most waiting per model [64].")] = None,
    timeout: Annotated[float | None, typer.Option(help="Request timeout in seconds [120].")] = None,
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
        typer.Option(help="Key of POST /v1/load_lora_adapter and unload (also KOLLM_ADMIN_KEY)."),
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

    from kollm.serve.server import Access, build_server, resolve_config

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
        "rag": rag,
    }
    try:
        cfg = resolve_config(loaded, models or [], options, _pairs(domain, "--domain"))
    except ValueError as err:
        fail(str(err))
    access = Access(_api_keys(api_key, api_key_file), _admin_keys(admin_key), adapter_root)
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
        Path | None, typer.Option(help="File with one accepted key a line.")
    ] = None,
    admin_key: Annotated[
        str | None, typer.Option(help="The key that may promote and roll back.")
    ] = None,
    runs_dir: Annotated[Path | None, typer.Option(help="Recipe runs to show [./runs].")] = None,
) -> None:
    """The web console alone, with no model served: runs, registry, feedback (/ui)."""
    import uvicorn

    from kollm.config import ServeConfig
    from kollm.serve.server import Access, build_server

    access = Access(_api_keys(api_key, api_key_file), _admin_keys(admin_key))
    app_, _ = build_server(ServeConfig(models=[]), None, access, runs_dir=runs_dir)
    console.print(f"kollm ui: http://{host}:{port}/ui")
    uvicorn.run(app_, host=host, port=port)
