"""`kollm serve`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kollm.cli.common import (
    AllowNoKeysOpt,
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
    host: str,
    allow_no_keys: bool,
    api_key: str | None,
    api_key_file: Path | str | None,
    admin_key: str | None,
    adapter_root: Path | None = None,
    secret_file: str | None = None,
):
    """Who may call the server: --api-key, the key file (with roles and names), the
    environment's KOLLM_API_KEY, KOLLM_API_KEY_FILE and KOLLM_ADMIN_KEY; and the secret that
    signs console logins. Exits before any model loads when `host` is reachable from other
    machines and no key is set, unless `allow_no_keys`."""
    from kollm.serve.keys import KeyFileError, gather_keys
    from kollm.serve.server import Access
    from kollm.serve.sessions import configured_secret

    try:
        keys = gather_keys(api_key, api_key_file, admin_key)
        secret = configured_secret(secret_file)
    except KeyFileError as err:
        fail(str(err))
    if not (keys.api_keys or keys.admin_keys) and not allow_no_keys and not _loopback(host):
        fail(
            f"refusing to listen on {host} with no API keys: anyone who reaches it could call"
            " the models and read the logged conversations in the console. Give --api-key-file"
            " FILE (or KOLLM_API_KEY_FILE, KOLLM_API_KEY), or --allow-no-keys to serve openly"
        )
    return Access(keys.api_keys, keys.admin_keys, adapter_root, keys.names, secret)


def _loopback(host: str) -> bool:
    """True for an address only this machine reaches (127.0.0.0/8, ::1, localhost)."""
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


@app.command("serve")
def serve(
    models: Annotated[
        list[str] | None, typer.Argument(help="NAME@ALIAS, NAME:VERSION, NAME or a model dir.")
    ] = None,
    recipe: Annotated[
        Path | None, typer.Option(help="Take settings from this recipe's serve section.")
    ] = None,
    engine: Annotated[
        str | None,
        typer.Option(
            help="auto (llamacpp where llama-server is found, else ctranslate2), ctranslate2,"
            " transformers, vllm or llamacpp [auto]."
        ),
    ] = None,
    quant: Annotated[
        str | None, typer.Option(help="llamacpp: GGUF quantisation (q8_0, q4_k_m ...) [q8_0].")
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
    max_concurrency: Annotated[
        int | None,
        typer.Option(
            help="vllm, llamacpp: most requests in flight per model [vLLM's 256, llama.cpp's 8]."
        ),
    ] = None,
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
    tool_parser: Annotated[
        str | None,
        typer.Option(
            help="How answers' tool calls are read: auto (from the chat template), hermes,"
            " llama3_json or mistral [auto]."
        ),
    ] = None,
    unconstrained_json: Annotated[
        bool | None,
        typer.Option(
            "--unconstrained-json/--no-unconstrained-json",
            help="ctranslate2: answer response_format unconstrained, each choice saying in"
            " schema_valid whether it is valid [off: 400].",
        ),
    ] = None,
    trust_remote_code: Annotated[
        bool,
        typer.Option(
            "--trust-remote-code",
            help="Run the modeling code a model ships beside its weights (EXAONE 3.x).",
        ),
    ] = False,
    allow_quality_loss: Annotated[
        bool,
        typer.Option(
            "--allow-quality-loss",
            help="Serve a conversion that loses more than serve.max_quality_loss against its"
            " registered weights (it is still measured).",
        ),
    ] = False,
    allow_no_keys: AllowNoKeysOpt = False,
) -> None:
    """Serve models over an OpenAI-compatible HTTP API.

    On an address other machines reach (--host 0.0.0.0) it needs keys: --api-key-file, or
    KOLLM_API_KEY_FILE / KOLLM_API_KEY (--allow-no-keys serves openly)."""
    import uvicorn

    from kollm.cluster.quality import conversion_measurer
    from kollm.serve.server import build_server, engine_choice, resolve_config

    loaded = _load(recipe, None) if recipe is not None else None
    options = {
        "engine": engine,
        "host": host,
        "port": port,
        "max_batch": max_batch,
        "max_queue": max_queue,
        "max_concurrency": max_concurrency,
        "quant": quant,
        "request_timeout_s": timeout,
        "max_body_mb": max_body_mb,
        "alias_poll_s": alias_poll,
        "log_requests": False if no_log else None,
        "adapters": _pairs(adapter, "--adapter") or None,
        "rag": rag,
        "api_key_file": str(api_key_file) if api_key_file is not None else None,
        "tool_parser": tool_parser,
        "unconstrained_json": unconstrained_json,
        "trust_remote_code": trust_remote_code or None,
        "allow_quality_loss": allow_quality_loss or None,
    }
    try:
        cfg = resolve_config(loaded, models or [], options, _pairs(domain, "--domain"))
    except ValueError as err:
        fail(str(err))
    cfg, why = engine_choice(cfg)
    access = _access(
        cfg.host, allow_no_keys, api_key, cfg.api_key_file, admin_key, adapter_root, cfg.secret_file
    )
    # A model that cannot load stops the server (exit 2), not a 503 forever.
    rag_settings = loaded.rag if loaded is not None else None
    app, manager = build_server(
        cfg,
        None,
        access,
        load_before_ready=True,
        rag=rag_settings,
        runs_dir=runs_dir,
        prepare=_llamacpp_files(cfg) if cfg.engine == "llamacpp" else None,
        measure=conversion_measurer(trust_remote_code=cfg.trust_remote_code),
    )
    try:
        manager.check_refs()
    except ValueError as err:
        fail(f"cannot serve: {err}")
    console.print(
        f"kollm serve: {', '.join(cfg.models)} with {cfg.engine} ({why}) on"
        f" http://{cfg.host}:{cfg.port}/v1 (console: http://{cfg.host}:{cfg.port}/ui)"
    )
    try:
        uvicorn.run(app, host=cfg.host, port=cfg.port)
    except SystemExit:
        if manager.failure:  # uvicorn exits 3 on a failed start-up; the reason is ours
            fail(f"cannot serve: {manager.failure}")
        raise


def _llamacpp_files(cfg):
    """The llamacpp engine's GGUF maker; exit 2 with how to get llama-server when it is not
    on this machine."""
    from kollm.cluster.gguf_files import llamacpp_preparer
    from kollm.engines.llamacpp_engine import LlamaServerMissing, find_llama_server

    try:
        find_llama_server()
    except LlamaServerMissing as err:
        fail(str(err))
    return llamacpp_preparer(cfg.quant, trust_remote_code=cfg.trust_remote_code)


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
    allow_no_keys: AllowNoKeysOpt = False,
) -> None:
    """The web console alone, with no model served: runs, registry, feedback (/ui)."""
    import uvicorn

    from kollm.config import ServeConfig
    from kollm.serve.server import build_server

    access = _access(host, allow_no_keys, api_key, api_key_file, admin_key)
    app_, _ = build_server(ServeConfig(models=[]), None, access, runs_dir=runs_dir)
    console.print(f"kollm ui: http://{host}:{port}/ui")
    uvicorn.run(app_, host=host, port=port)
