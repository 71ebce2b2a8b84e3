"""`kollm batch` and `kollm deploy`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.progress import Progress

from kollm.cli.common import (
    AllowNoKeysOpt,
    OverridesArg,
    RayAddressOpt,
    RayTokenOpt,
    _load,
    app,
    console,
    fail,
    user_errors,
)
from kollm.cli.jobs import _job_executor
from kollm.config import Recipe, RecipeError
from kollm.registry import Registry


@app.command("batch")
def batch(
    ref: Annotated[str, typer.Argument(help="NAME@ALIAS, NAME:VERSION, NAME or a model dir.")],
    input: Annotated[Path, typer.Option(help="JSONL of requests: prompt or messages a line.")],
    output: Annotated[Path, typer.Option(help="JSONL of answers (written whole at the end).")],
    engine: Annotated[str, typer.Option(help="ctranslate2, transformers or vllm.")] = "ctranslate2",
    max_tokens: Annotated[int, typer.Option(help="Most tokens per answer.")] = 128,
    batch_size: Annotated[int, typer.Option(help="Requests per engine call.")] = 8,
) -> None:
    """Generate an answer for every request in a file (the batch tier: no server)."""

    from kollm.engines.base import GenerationParams
    from kollm.serve.batch import BatchInputError, generate_file

    params = GenerationParams(max_new_tokens=max_tokens)
    with Progress(console=console) as progress, user_errors():
        task = progress.add_task("generating", total=None)
        try:
            count = generate_file(
                ref,
                input,
                output,
                engine,
                params,
                batch_size,
                progress=lambda done, total: progress.update(task, completed=done, total=total),
            )
        except (BatchInputError, ValueError) as err:
            fail(str(err))
    console.print(f"batch: {count} answers from {ref} -> {output}")


def _deploy_recipe(recipe: Path | None, overrides: list[str] | None) -> Recipe:
    """The recipe a deployment is made from, with the serve settings its units run."""
    from kollm.cluster import units
    from kollm.config import apply_overrides, format_validation_error, parse_overrides

    try:
        if recipe is not None:
            cfg = _load(recipe, overrides)
        else:
            cfg = Recipe.model_validate(apply_overrides({}, parse_overrides(overrides or [])))
        return cfg.model_copy(update={"serve": units.unit_serve(cfg.serve)})
    except RecipeError as err:
        fail(str(err))
    except ValidationError as err:
        fail(format_validation_error("overrides", err, Recipe))
    raise AssertionError  # fail() exits


@app.command("deploy")
def deploy(
    ref: Annotated[str, typer.Argument(help="NAME@ALIAS, NAME:VERSION or NAME in the registry.")],
    overrides: OverridesArg = None,
    recipe: Annotated[
        Path | None, typer.Option(help="Take the deploy and serve sections from this recipe.")
    ] = None,
    address: RayAddressOpt = None,
    token: RayTokenOpt = None,
    python: Annotated[str, typer.Option(help="The Python a batch job runs.")] = "python",
    wait_s: Annotated[float, typer.Option(help="Seconds to wait for RUNNING (0: no wait).")] = 300,
    probe: Annotated[
        bool, typer.Option(help="Send one request and report its time (a cold start if none ran).")
    ] = False,
    delete: Annotated[bool, typer.Option("--delete", help="Remove the application.")] = False,
    target: Annotated[
        str | None,
        typer.Option(help="ray, local, or a unit's files: docker, k8s, kserve (deploy.target)."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="docker, k8s, kserve: the directory to write into.")
    ] = None,
    allow_no_keys: AllowNoKeysOpt = False,
) -> None:
    """Deploy a model on Ray Serve (always-on, scale-to-zero) or run it over a file (batch).

    Settings come from the recipe's `deploy` section and overrides such as
    deploy.tier=scale-to-zero deploy.max_replicas=4."""
    from kollm.cli.serve import _loopback
    from kollm.cluster.deploy import DeployError, ServeClient, deploy_to_ray, has_keys

    if target is not None:
        overrides = [*(overrides or []), f"deploy.target={target}"]
    cfg = _deploy_recipe(recipe, overrides)
    d = cfg.deploy
    with user_errors():
        version = Registry().checkout(ref)
    if d.target in ("docker", "k8s", "kserve"):
        _write_unit(version, cfg, out)
        return
    if d.tier == "batch":
        _deploy_batch(ref, cfg, address, token, python)
        return
    if d.target == "local":
        fail(f"tier {d.tier} on this machine is `kollm serve {ref}`; deploy.target=ray scales out")
    if not address:
        fail("--address http://HOST:8265 (the Ray dashboard) is needed for deploy.target ray")
    if not delete and not allow_no_keys and not _loopback(d.host) and not has_keys(cfg.serve):
        fail(
            f"refusing to serve on {d.host} with no API keys: set serve.api_key_file (or"
            " KOLLM_API_KEY_FILE) to a key file every Ray node sees, or give --allow-no-keys"
        )
    client = ServeClient(address, token)
    name = d.app_name or version.name
    try:
        if delete:
            client.delete(name)
            console.print(f"deploy: application {name} removed from {address}")
            return
        url = deploy_to_ray(
            version, ref, d, cfg.serve, str(Registry().home), client, wait_s, rag=cfg.rag
        )
    except DeployError as err:
        fail(str(err))
    low, high = d.replicas_min, d.max_replicas
    console.print(f"deploy: {version.ref} as {name} ({d.tier}, {low}-{high} replicas) at {url}")
    if probe:
        _probe(url, name)


def _probe(url: str, model: str) -> None:
    import time

    import httpx

    body = {"model": model, "messages": [{"role": "user", "content": "안녕하세요"}]}
    started = time.perf_counter()
    response = httpx.post(f"{url}/chat/completions", json={**body, "max_tokens": 8}, timeout=600)
    took = time.perf_counter() - started
    if response.status_code != 200:
        fail(f"probe: HTTP {response.status_code}: {response.text[:300]}")
    start = response.headers.get("x-kollm-replica-start-s", "?")
    console.print(f"probe: answered in {took:.2f} s (the replica took {start} s to start)")


def _deploy_batch(ref: str, cfg: Recipe, address: str | None, token: str | None, python: str):
    from kollm.cluster.jobspec import JobError, JobSpec

    d = cfg.deploy
    args = [ref, "--input", str(Path(d.input).resolve()), "--output", str(Path(d.output).resolve())]
    args += ["--engine", cfg.serve.engine, "--batch-size", str(cfg.serve.max_batch)]
    spec = JobSpec("batch", "", cpus=d.replica_cpus, gpus=int(d.replica_gpus), args=args)
    executor = "ray" if d.target == "ray" else "local"
    try:
        job_id = _job_executor(
            executor=executor, address=address, token=token, python=python
        ).submit(spec)
    except JobError as err:
        fail(str(err))
    console.print(f"deploy: batch job {job_id} ({executor}); see: kollm jobs logs {job_id} -f")


def _write_unit(version, cfg: Recipe, out: Path | None) -> None:
    """The files of a unit the site deploys itself, validated where the schemas are here."""
    from kollm.cluster import units
    from kollm.cluster.schemas import SchemasMissing, validate

    if out is None:
        fail(f"--out DIR: where the {cfg.deploy.target} files go")
    d, serve = cfg.deploy, cfg.serve
    try:
        if d.target == "docker":
            written = units.docker_context(version, out, serve, d)
            console.print(f"deploy: docker build context for {version.ref} in {out}")
            for path in written:
                console.print(f"  {path}")
            console.print(
                units.DOCKER_KEY_NOTE.replace("# ", "  "),
                highlight=False,
                markup=False,
                soft_wrap=True,
            )
            return
        manifests = (
            units.k8s_manifests(version, serve, d)
            if d.target == "k8s"
            else [units.kserve_manifest(version, serve, d)]
        )
    except units.UnitError as err:
        fail(str(err))
    try:
        errors = [e for m in manifests for e in validate(m)]
    except SchemasMissing as err:
        errors = []
        console.print(f"[yellow]not validated:[/] {err}")
    if errors:
        fail("the manifests do not fit their schemas:\n" + "\n".join(errors))
    filename = f"{d.target}.yaml"
    header = units.key_instructions(version, serve, d, filename)
    path = units.write_manifests(out, manifests, filename, header)
    kinds = ", ".join(m["kind"] for m in manifests)
    console.print(f"deploy: {kinds} for {version.ref} -> {path}")
    console.print(
        header.replace("# ", "  ").replace("#", ""), highlight=False, markup=False, soft_wrap=True
    )
