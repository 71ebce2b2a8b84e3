"""Remote code: bases whose modeling files ship beside their weights (EXAONE 3.x), opt-in.

transformers runs such a model's Python only with `trust_remote_code=True`; kollm asks for
it once (the recipe's `model.trust_remote_code`, `--trust-remote-code`), pins a hub id to
`model.revision` so the code that runs is the code that was read, and records the choice
beside the weights it trains (REMOTE_FILE), so whatever later loads that dir (serve, eval,
export, the registry) knows the model needs remote code without being told the base again.
Imports nothing of kollm: engines and the registry use it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REMOTE_FILE = "kollm_remote.json"


class RemoteCodeRefused(ValueError):
    """A model that needs remote code, loaded without the flag that allows it."""


def is_hub_id(base: str) -> bool:
    """True for a Hugging Face hub id (not a local dir, not `scratch`)."""
    return base != "scratch" and not Path(base).expanduser().exists()


def base_kwargs(base: str, trust_remote_code: bool, revision: str | None) -> dict[str, Any]:
    """from_pretrained kwargs for a recipe's base: the flag, and the pinned revision of a hub
    id (a local dir has no revisions)."""
    kwargs: dict[str, Any] = {"trust_remote_code": True} if trust_remote_code else {}
    if revision and is_hub_id(base):
        kwargs["revision"] = revision
    return kwargs


def save_remote(model_dir: Path, base: str, revision: str | None) -> None:
    """Record beside saved weights that they need remote code, and where it came from."""
    record = {"trust_remote_code": True, "base": base, "revision": revision}
    (Path(model_dir) / REMOTE_FILE).write_text(json.dumps(record, indent=1), encoding="utf-8")


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def remote_record(model_dir: Path) -> dict | None:
    """What loading `model_dir` needs from remote code, or None when it needs none: the
    record training wrote, else a config.json whose `auto_map` names modeling files (a base
    downloaded as is), else the same of an adapter's local base."""
    model_dir = Path(model_dir)
    record = _json(model_dir / REMOTE_FILE)
    if record.get("trust_remote_code"):
        return record
    if _json(model_dir / "config.json").get("auto_map"):
        return {"trust_remote_code": True, "base": str(model_dir), "revision": None}
    base = _json(model_dir / "adapter_config.json").get("base_model_name_or_path")
    if base and Path(base).is_dir() and Path(base).resolve() != model_dir.resolve():
        return remote_record(Path(base))
    return None


def dir_kwargs(
    model_dir: Path, trust_remote_code: bool, load_from: str | None = None
) -> dict[str, Any]:
    """from_pretrained kwargs for loading `load_from` (default: the dir itself; an adapter's
    base) for the saved model dir; the recorded revision pins a hub base. A dir that needs
    remote code without `trust_remote_code` is refused by name, before transformers asks on
    a terminal or fails with its own traceback."""
    record = remote_record(model_dir)
    if record is None:
        return {}
    if not trust_remote_code:
        raise RemoteCodeRefused(
            f"{model_dir} needs remote code: pass --trust-remote-code (recipe:"
            f" model.trust_remote_code) to run the modeling files of {record.get('base')}"
        )
    load_from = load_from or str(model_dir)
    pinned = record.get("revision") if load_from == record.get("base") else None
    return base_kwargs(load_from, True, pinned)
