"""The GGUF files the llamacpp engine serves: a version's GGUF export, made on first use with
`kollm export` (so it is recorded in the version's exports) and found again on later loads,
its sha256 checked; and LoRA adapters as GGUF LoRA files, through llama.cpp's own
`convert_lora_to_gguf.py`.

`kollm serve --engine llamacpp` hands `prepare` to the server, which calls it for each model it
loads (and again when an alias moves), so serving never converts a version twice."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kollm.artifacts import file_sha256
from kollm.cluster import llamacpp
from kollm.cluster.export import ExportError, export_model
from kollm.registry import Registry, RegistryError
from kollm.store import default_home

log = logging.getLogger(__name__)
DEFAULT_QUANT = "q8_0"


def exports_dir(stem: str) -> Path:
    return default_home() / "exports" / stem


def recorded_gguf(registry: Registry, ref: str, quant: str) -> Path | None:
    """The newest GGUF export of `ref` at `quant` whose file is still there with the sha256
    recorded for it; None when there is none (or it changed: it is made again)."""
    for row in reversed(registry.exports(ref)):
        if row["format"] != "gguf" or (row["quant"] or "").lower() != quant:
            continue
        path = Path(row["path"])
        if path.is_file() and file_sha256(path) == row["sha256"]:
            return path
        log.warning("%s: recorded GGUF %s is missing or changed; exporting again", ref, path)
    return None


def gguf_for(
    ref: str,
    model_dir: Path,
    quant: str,
    registry: Registry | None = None,
    trust_remote_code: bool = False,
) -> Path:
    """The GGUF file of a registered version (made once, recorded) or of a model dir (made
    once under $KOLLM_HOME/exports, keyed by the dir's path)."""
    registry = registry or Registry()
    if not Path(ref).is_dir():
        version = registry.checkout(ref)
        found = recorded_gguf(registry, version.ref, quant)
        if found is not None:
            return found
        out = exports_dir(f"{version.name}-{version.version}")
        log.info("llamacpp: exporting %s to GGUF (%s), once", version.ref, quant)
        return export_model(
            version.ref, "gguf", out, quant, registry, trust_remote_code=trust_remote_code
        ).path
    key = hashlib.sha1(str(model_dir.resolve()).encode()).hexdigest()[:12]
    out = exports_dir(f"dir-{model_dir.name}-{key}")
    existing = sorted(out.glob(f"*-{quant}.gguf"))
    if existing:
        return existing[0]
    return export_model(
        str(model_dir), "gguf", out, quant, registry, trust_remote_code=trust_remote_code
    ).path


def lora_gguf(adapter_dir: Path, base_dir: Path) -> Path:
    """A PEFT LoRA adapter as a GGUF LoRA file (llama.cpp's converter), made once beside the
    other exports, keyed by the adapter's weights."""
    weights = next(
        (
            adapter_dir / n
            for n in ("adapter_model.safetensors", "adapter_model.bin")
            if (adapter_dir / n).is_file()
        ),
        None,
    )
    if weights is None:
        raise ExportError(f"{adapter_dir}: no adapter_model.safetensors; not a PEFT LoRA dir")
    out = exports_dir("lora") / f"{adapter_dir.name}-{file_sha256(weights)[:12]}.gguf"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    script = llamacpp.lora_converter()
    staged = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    command = [sys.executable, "-m", "kollm.cluster.gguf_convert", str(script), str(adapter_dir)]
    command += ["--base", str(base_dir), "--outtype", "f16", "--outfile", str(staged)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        staged.unlink(missing_ok=True)
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-5:])
        raise ExportError(f"llama.cpp's LoRA converter failed on {adapter_dir}:\n{tail}")
    os.replace(staged, out)
    return out


def llamacpp_preparer(
    quant: str = DEFAULT_QUANT, registry: Registry | None = None, trust_remote_code: bool = False
) -> Callable[[str, Path, dict[str, str]], dict[str, Any]]:
    """What the server calls before it opens a llamacpp engine: the version's GGUF and each
    adapter's GGUF LoRA file, as the engine's options (`trust_remote_code` as `kollm serve`
    was given it, for the merge the export makes)."""

    def prepare(ref: str, model_dir: Path, adapters: dict[str, str]) -> dict[str, Any]:
        try:
            gguf = gguf_for(ref, model_dir, quant.lower(), registry, trust_remote_code)
            loras = {name: lora_gguf(Path(d), model_dir) for name, d in adapters.items()}
        except (ExportError, RegistryError, llamacpp.ConverterMissing) as err:
            raise ValueError(f"{ref}: {err}") from err
        return {"gguf": gguf, "adapters": loras}

    return prepare
