"""What an adapter version was trained on, recorded in its lineage and checked on checkout.

A PEFT adapter holds only its own weights and the name of its base
(`base_model_name_or_path`: a hub id or a dir); whatever sits under that name when it is served
or merged is what it runs over. Registering an adapter records, under `lineage["base"]`, that
name, the dir it resolved to (for a hub id, the cached snapshot and its commit), the base's
registry reference when it was one, and the sha256 of the base's weights. `checkout` finds the
base the same way again and refuses the version by name when the weights there differ.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kollm.artifacts import ArtifactError, weights_sha256


def adapter_config(artifact: Path) -> dict[str, Any] | None:
    path = Path(artifact) / "adapter_config.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def locate_base(name: str, revision: str | None = None) -> tuple[Path | None, str | None]:
    """(dir, revision) of a base as transformers would load it: a local dir as it is, a hub
    id from the local cache (no download; the snapshot's commit is its revision); (None, None)
    when it is on neither."""
    if Path(name).is_dir():
        return Path(name).resolve(), None
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(name, revision=revision, local_files_only=True))
    except Exception:  # not cached, not a valid hub id: there is no such base here
        return None, None
    return path, path.name if path.parent.name == "snapshots" else revision


def _weights(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return weights_sha256(path)
    except ArtifactError:
        return None


def base_record(artifact: Path, base_ref: str | None = None) -> dict[str, Any] | None:
    """The `base` lineage of an adapter dir (None for a full model): `name_or_path`, `path`,
    `revision`, `weights_sha256` (None when the base is not on this machine), and `ref` when
    the caller names the base's registered version."""
    config = adapter_config(artifact)
    if config is None or not config.get("base_model_name_or_path"):
        return None
    name = config["base_model_name_or_path"]
    path, revision = locate_base(name, config.get("revision"))
    record = {
        "name_or_path": name,
        "path": str(path) if path else None,
        "revision": revision,
        "weights_sha256": _weights(path),
    }
    if base_ref:
        record["ref"] = base_ref
    return record


def base_mismatch(ref: str, artifact: Path, base: dict[str, Any]) -> str | None:
    """Why the base on disk now is not the one the adapter `ref` recorded, or None when it is
    (or when nothing was recorded to compare with)."""
    expected = base.get("weights_sha256")
    if not expected:
        return None
    config = adapter_config(artifact) or {}
    name = config.get("base_model_name_or_path") or base["name_or_path"]
    path, _ = locate_base(name, config.get("revision"))
    found = _weights(path)
    if found == expected:
        return None
    trained = f"{base.get('ref') or base['name_or_path']} (weights sha256 {expected[:12]}"
    trained += f", revision {base['revision']})" if base.get("revision") else ")"
    if path is None:
        now = f"{name} is not on this machine"
    elif found is None:
        now = f"{path} holds no weights"
    else:
        now = f"the base at {path} now has weights sha256 {found[:12]}"
    return (
        f"{ref}: this adapter was trained on {trained}, but {now}; refusing to serve or merge"
        " it over other weights. Restore that base, or train and register the adapter again"
        " on the base that is there now"
    )
