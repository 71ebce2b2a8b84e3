"""The manifests `kollm deploy` writes, checked against the schemas the platforms publish:

- Kubernetes objects against the `kubernetes` client's models (generated from the Kubernetes
  OpenAPI document; pydantic models that forbid unknown fields and check every type).
- KServe's InferenceService against the KServe SDK's models (generated from KServe's OpenAPI
  document): the SDK is not installed (its pins clash with ours), so `make` fetches its wheel
  with pip, checks its sha256 and unpacks the model files, which are read as data (their
  `openapi_types`, `attribute_map` and required fields), never imported. The Kubernetes types
  inside an InferenceService (the containers, resources, metadata) go to the client's models.
"""

from __future__ import annotations

import ast
import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from functools import cache
from pathlib import Path
from typing import Any

KSERVE_VERSION = "0.21.0"
KSERVE_WHEEL = f"kserve-{KSERVE_VERSION}-py3-none-any.whl"
KSERVE_SHA256 = "df9bc5888704d9085015e08f1a8fced5ff0698f3becc6212d4e7b8234c71623b"
K8S_KINDS = {
    ("v1", "PersistentVolumeClaim"): "V1PersistentVolumeClaim",
    ("v1", "Service"): "V1Service",
    ("apps/v1", "Deployment"): "V1Deployment",
}
KSERVE_KINDS = {("serving.kserve.io/v1beta1", "InferenceService"): "V1beta1InferenceService"}
REQUIRED = re.compile(r"Invalid value for `(\w+)`, must not be `None`")


class SchemasMissing(RuntimeError):
    """A schema this machine lacks; the message says how to get it."""


def kserve_dir() -> Path:
    return Path(sys.prefix) / "share" / "kollm" / f"kserve-{KSERVE_VERSION}" / "models"


def fetch(source: Path | None = None) -> Path:
    """The KServe SDK's model files, from its wheel (pinned by version and sha256): downloaded
    with pip, or taken from the directory `source` (an air-gapped install's wheelhouse)."""
    target = kserve_dir()
    if (target / "v1beta1_inference_service.py").is_file():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        wheel = Path(source or tmp) / KSERVE_WHEEL
        if source is None:
            command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp]
            subprocess.run([*command, f"kserve=={KSERVE_VERSION}"], check=True)
        elif not wheel.is_file():
            raise SchemasMissing(
                f"{KSERVE_WHEEL} is not in {source} (make wheelhouse puts it there)"
            )
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        if digest != KSERVE_SHA256:
            raise RuntimeError(f"{wheel}: sha256 {digest} is not the pinned {KSERVE_SHA256}")
        staged = Path(tmp) / "models"
        staged.mkdir()
        with zipfile.ZipFile(wheel) as archive:
            for name in archive.namelist():
                if name.startswith("kserve/models/") and name.endswith(".py"):
                    (staged / Path(name).name).write_bytes(archive.read(name))
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            shutil.move(str(staged), str(target))
    return target


@cache
def kserve_models() -> dict[str, tuple[dict[str, str], dict[str, str], set[str]]]:
    """Class name -> (attribute types, attribute -> JSON key, required attributes)."""
    root = kserve_dir()
    if not root.is_dir():
        raise SchemasMissing(
            f"KServe's schema is not at {root}: python -m kollm.cluster.schemas fetch"
        )
    models = {}
    for path in root.glob("v1*.py"):
        source = path.read_text(encoding="utf-8")
        for node in ast.parse(source).body:
            if isinstance(node, ast.ClassDef):
                models[node.name] = _class_schema(node, ast.get_source_segment(source, node) or "")
    return models


def _class_schema(node: ast.ClassDef, source: str):
    found: dict[str, Any] = {}
    for item in node.body:
        target = item.targets[0] if isinstance(item, ast.Assign) else None
        if isinstance(target, ast.Name) and target.id in ("openapi_types", "attribute_map"):
            found[target.id] = ast.literal_eval(item.value)
    return (
        found.get("openapi_types", {}),
        found.get("attribute_map", {}),
        set(REQUIRED.findall(source)),
    )


def _k8s_model(name: str):
    try:
        from kubernetes.client import models
    except ImportError as err:
        raise SchemasMissing(
            "the kubernetes client is not installed (pip install kubernetes)"
        ) from err
    return getattr(models, name, None)


def validate(manifest: dict[str, Any]) -> list[str]:
    """What does not fit the manifest's schema: one line per problem, naming the field."""
    key = (manifest.get("apiVersion"), manifest.get("kind"))
    if key in K8S_KINDS:
        return _pydantic(K8S_KINDS[key], manifest, str(key[1]))
    if key in KSERVE_KINDS:
        return _check(manifest, KSERVE_KINDS[key], str(key[1]))
    return [f"{key[1]}: no schema for apiVersion {key[0]} kind {key[1]}"]


def _pydantic(name: str, value: Any, where: str) -> list[str]:
    from pydantic import ValidationError

    model = _k8s_model(name)
    if model is None:
        return [f"{where}: unknown Kubernetes type {name}"]
    try:
        model.model_validate(value)
    except ValidationError as err:
        return [f"{where}.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()]
    return []


def _check(value: Any, type_name: str, where: str) -> list[str]:
    """`value` against an OpenAPI type name of KServe's models (or the Kubernetes types)."""
    if type_name.startswith("list["):
        if not isinstance(value, list):
            return [f"{where}: expected a list"]
        return [e for i, v in enumerate(value) for e in _check(v, type_name[5:-1], f"{where}[{i}]")]
    if type_name.startswith("dict("):
        inner = type_name[5:-1].split(", ", 1)[1]
        if not isinstance(value, dict):
            return [f"{where}: expected a mapping"]
        return [e for k, v in value.items() for e in _check(v, inner, f"{where}.{k}")]
    primitive = {"str": str, "int": int, "bool": bool, "float": (int, float), "datetime": str}
    if type_name in primitive:
        ok = isinstance(value, primitive[type_name]) and not (
            type_name in ("int", "float") and isinstance(value, bool)
        )
        return [] if ok else [f"{where}: expected {type_name}, got {type(value).__name__}"]
    if type_name == "object":
        return []
    models = kserve_models()
    if type_name not in models:
        return _pydantic(type_name, value, where)
    return _fields(value, type_name, models[type_name], where)


def _fields(value: Any, type_name: str, schema, where: str) -> list[str]:
    types, keys, required = schema
    if not isinstance(value, dict):
        return [f"{where}: expected an object ({type_name})"]
    attribute = {json_key: attr for attr, json_key in keys.items()}
    errors = [f"{where}.{k}: not a field of {type_name}" for k in value if k not in attribute]
    errors += [
        f"{where}.{keys[a]}: required by {type_name}" for a in required if keys[a] not in value
    ]
    for key, item in value.items():
        if key in attribute:
            errors += _check(item, types[attribute[key]], f"{where}.{key}")
    return errors


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] != ["fetch"] or len(args) not in (1, 3) or args[1:2] not in ([], ["--from"]):
        raise SystemExit("usage: python -m kollm.cluster.schemas fetch [--from DIR]")
    source = Path(args[2]) if len(args) == 3 else None
    print(f"KServe {KSERVE_VERSION} schema: {fetch(source)}")  # noqa: T201  (a make step's output)
