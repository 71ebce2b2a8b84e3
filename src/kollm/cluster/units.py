"""`kollm deploy REF --target docker|k8s|kserve --out DIR`: a registered version as the units a
site deploys: a container image without weights (the model on a volume at `/models/NAME`) or
with them baked in, Kubernetes manifests, or a KServe InferenceService.

Every unit runs the same command line, `serve_command()`, which the tests run as it is. The
model dir carries its CTranslate2 conversion beside it (the name the engine looks for), so a
replica starts without converting, and a read-only volume or image layer is enough.

Every unit is locked: the server listens on 0.0.0.0, where `kollm serve` refuses to start
without keys. It reads them from KOLLM_API_KEY_FILE: a Kubernetes Secret NAME-keys (which the
site creates: `key_instructions`) mounted at /run/secrets/kollm, or a key file docker mounts
there; the console's signing secret comes from the Secret's optional `secret` entry, else from
the keys (the same on every replica)."""

from __future__ import annotations

import json
import logging
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from kollm.config import DeployConfig, ServeConfig
from kollm.registry import ModelVersion

log = logging.getLogger(__name__)

MODEL_ROOT = "/models"  # where a unit finds the model: /models/NAME (a volume, or baked in)
DATA_DIR = "/data/kollm"  # KOLLM_HOME in a container: the request log and feedback
PORT = 8000
USER_ID = 10001
TARGETS = ("docker", "k8s", "kserve")
KEY_DIR = "/run/secrets/kollm"  # where a unit mounts its key file
KEY_FILE = f"{KEY_DIR}/keys"


class UnitError(ValueError):
    """A unit that cannot be built for this version; the message names the setting."""


def unit_serve(serve: ServeConfig) -> ServeConfig:
    """The serve settings a unit runs: its image carries a CTranslate2 conversion and no
    llama-server, so `engine: auto` is ctranslate2 there."""
    if serve.engine == "auto":
        return serve.model_copy(update={"engine": "ctranslate2"})
    return serve


def serve_command(name: str, serve: ServeConfig, root: str = MODEL_ROOT) -> list[str]:
    """The `kollm serve` command line every unit runs (and the tests run)."""
    serve = unit_serve(serve)
    command = ["kollm", "serve", f"{root}/{name}", "--engine", serve.engine]
    command += ["--host", "0.0.0.0", "--port", str(PORT)]
    command += ["--max-batch", str(serve.max_batch), "--max-queue", str(serve.max_queue)]
    return command


def stage_model(version: ModelVersion, out: Path, serve: ServeConfig) -> Path:
    """Copy the version's files to out/model/NAME and, for the ctranslate2 engine, convert
    them beside it, as the engine caches them (so no replica converts at start)."""
    target = out / "model" / version.name
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(version.artifact_path, target)
    if serve.engine == "ctranslate2":
        from kollm.engines.ctranslate2_engine import convert

        convert(target, "int8", version.weights_sha256)
    return target


# --- docker --------------------------------------------------------------------------------

DOCKERFILE = """\
# The kollm server image WITHOUT weights (unit a): mount the model at {root}/{name}
# (out/model/ of this context holds it, with its CTranslate2 conversion beside it).
#   docker build -f Dockerfile.server -t {image} .
#   docker run -p {port}:{port} -v $PWD/model:{root}:ro {keys} {image}
{key_note}# Sites build from their own mirrors: --build-arg BASE_IMAGE=... PIP_INDEX_URL=...
# A GPU image: --build-arg TORCH="torch==2.13.0 --index-url <your CUDA wheel index>".
ARG BASE_IMAGE={base_image}
FROM ${{BASE_IMAGE}}
ARG PIP_INDEX_URL=
ARG TORCH="torch==2.13.0"
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \\
    KOLLM_HOME={data} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
RUN useradd --uid {uid} --create-home --shell /usr/sbin/nologin kollm \\
    && mkdir -p {data} {root} && chown -R {uid} {data}
COPY lock.txt wheels/ /tmp/kollm/
RUN pip install ${{PIP_INDEX_URL:+--index-url "$PIP_INDEX_URL"}} $TORCH \\
    && pip install ${{PIP_INDEX_URL:+--index-url "$PIP_INDEX_URL"}} -c /tmp/kollm/lock.txt \\
       /tmp/kollm/kollm-*.whl \\
    && rm -rf /tmp/kollm
USER {uid}
VOLUME ["{data}"]
EXPOSE {port}
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \\
  CMD python -c "import sys, urllib.request as u; \\
sys.exit(u.urlopen('http://127.0.0.1:{port}/health', timeout=4).status != 200)"
CMD {command}
"""

BAKED = """\
# The kollm server image WITH {ref} baked in (unit b), on top of the image of Dockerfile.server:
#   docker build -f Dockerfile.server -t {server_image} .
#   docker build -f Dockerfile.baked --build-arg SERVER_IMAGE={server_image} -t {image} .
#   docker run -p {port}:{port} {keys} {image}
{key_note}ARG SERVER_IMAGE={server_image}
FROM ${{SERVER_IMAGE}}
COPY --chown={uid} model/ {root}/
"""

IGNORE = """\
# Nothing a server does not run: training state, caches, logs.
**/__pycache__
**/*.pyc
**/checkpoint-*
**/optimizer.pt
**/training_args.bin
*.log
"""


DOCKER_KEYS = f"-v $PWD/keys.txt:{KEY_FILE}:ro -e KOLLM_API_KEY_FILE={KEY_FILE}"
DOCKER_KEY_NOTE = f"""\
# The server listens on 0.0.0.0 and refuses to start without keys. keys.txt holds them,
# `KEY [viewer|admin] [NAME]` a line, readable by the image's user alone:
#   sudo chown {USER_ID} keys.txt && chmod 600 keys.txt
# (or, for one key: --env-file kollm.env with KOLLM_API_KEY=... and KOLLM_ADMIN_KEY=...).
# Replicas behind one balancer share the console's logins when they have the same keys, or
# the same KOLLM_SECRET.
"""


def image_names(version: ModelVersion, d: DeployConfig) -> tuple[str, str]:
    """(server image without weights, image with this version baked in)."""
    repo = d.image or "kollm"
    return f"{repo}:server", f"{repo}:{version.name}-{version.version}"


def docker_context(
    version: ModelVersion, out: Path, serve: ServeConfig, d: DeployConfig
) -> list[Path]:
    """A build context for both units; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    stage_model(version, out, serve)
    wheel = build_wheel(out / "wheels")
    shutil.copy2(lock_file(), out / "lock.txt")
    server_image, baked_image = image_names(version, d)
    values = {
        "name": version.name,
        "ref": version.ref,
        "root": MODEL_ROOT,
        "data": DATA_DIR,
        "port": PORT,
        "uid": USER_ID,
        "base_image": d.base_image,
        "server_image": server_image,
        "command": json.dumps(serve_command(version.name, serve)),
        "keys": DOCKER_KEYS,
        "key_note": DOCKER_KEY_NOTE,
    }
    files = {
        "Dockerfile.server": DOCKERFILE.format(image=server_image, **values),
        "Dockerfile.baked": BAKED.format(image=baked_image, **values),
        ".dockerignore": IGNORE,
        # BuildKit reads <Dockerfile>.dockerignore first: the server image's context leaves the
        # weights out (they may be many GB)
        "Dockerfile.server.dockerignore": IGNORE + "model/\n",
    }
    for name, text in files.items():
        (out / name).write_text(text, encoding="utf-8")
    return [out / name for name in files] + [wheel, out / "lock.txt", out / "model"]


def project_root() -> Path:
    import kollm

    root = Path(kollm.__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file():
        raise UnitError(
            f"kollm's source tree (pyproject.toml) is not at {root}: the docker target builds"
            " the image's kollm wheel from it"
        )
    return root


def lock_file() -> Path:
    return project_root() / "requirements" / "lock.txt"


def build_wheel(out: Path) -> Path:
    """kollm's own wheel, built from this source tree, for the image to install."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("kollm-*.whl"):
        old.unlink()
    command = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    done = subprocess.run([*command, "-w", str(out), str(project_root())], capture_output=True)
    if done.returncode != 0:
        raise UnitError(f"building kollm's wheel failed: {done.stderr.decode()[-400:]}")
    (wheel,) = out.glob("kollm-*.whl")
    return wheel


# --- kubernetes ----------------------------------------------------------------------------


def resources(version: ModelVersion, serve: ServeConfig, d: DeployConfig) -> dict[str, Any]:
    """Requests and limits from the planner: host memory for the int8 CPU engine, or the
    GPU count the planner needs on `deploy.card` (vllm)."""
    from kollm.cluster.planner import ModelShape, PlanRequest, plan, plan_on_cards

    shape = ModelShape.load(version.artifact_path)
    config = json.loads((Path(version.artifact_path) / "config.json").read_text())
    context = min(int(config.get("max_position_embeddings") or 4096), 8192)
    if serve.engine == "vllm" or d.card:
        if not d.card:
            raise UnitError("deploy.card: name the GPU (e.g. A100-80GB) the planner sizes for")
        req = PlanRequest("inference", "bf16", context, serve.max_batch, gpu=d.card)
        result, _card, _ = plan_on_cards(shape, req)
        gpus = (result.cards_needed or {}).get(d.card, 1)
        memory = max(8, math.ceil(result.weights_gib * 1.5))  # host RAM to load the weights
        limits = {"nvidia.com/gpu": str(gpus), "memory": f"{memory}Gi"}
        return {"requests": {"cpu": str(d.replica_cpus), **limits}, "limits": limits}
    precision = "int8" if serve.engine == "ctranslate2" else "fp32"
    result = plan(shape, "inference", precision, context, serve.max_batch)
    memory = max(1, math.ceil(result.total_gib + 1))  # + the Python process and its libraries
    return {
        "requests": {"cpu": str(d.replica_cpus), "memory": f"{memory}Gi"},
        "limits": {"memory": f"{memory}Gi"},
    }


def _object_name(version: ModelVersion) -> str:
    """A DNS-1123 name for the version's objects: kollm-NAME (NAME alone if it has kollm)."""
    name = version.name.lower().replace("_", "-")
    return name if name.startswith("kollm") else f"kollm-{name}"


def _labels(version: ModelVersion) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "kollm",
        "app.kubernetes.io/instance": version.name,
        "kollm/version": str(version.version),
    }


def _probe(path: str, delay: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": PORT},
        "initialDelaySeconds": delay,
        "periodSeconds": 10,
        "timeoutSeconds": 5,
        "failureThreshold": 6,
    }


def keys_secret(version: ModelVersion) -> str:
    """The Secret a Kubernetes unit reads its keys from (the site creates it)."""
    return f"{_object_name(version)}-keys"


def key_instructions(
    version: ModelVersion, serve: ServeConfig, d: DeployConfig, manifest: str
) -> str:
    """How to create the keys' Secret and apply `manifest`: the manifest's header comment."""
    secret = keys_secret(version)
    if d.target == "kserve" and serve.engine == "vllm":
        return (
            "# KServe's Hugging Face runtime serves this version and takes no API keys: anyone\n"
            "# who reaches it may call it. Put it behind an authenticating gateway.\n"
        )
    return f"""\
# The server refuses to start without keys: create the Secret {secret} first, from a key file
# (`KEY [viewer|admin] [NAME]` a line) and, optionally, the secret that signs console logins
# (without it, replicas derive one from the keys):
#   kubectl -n {d.namespace} create secret generic {secret} --from-file=keys=keys.txt \\
#     --from-literal=secret="$(openssl rand -hex 32)"
#   kubectl apply -f {manifest}
# Clients send `Authorization: Bearer KEY`; /health stays open for the probes, and /metrics
# needs a key too (give Prometheus one: `authorization: {{credentials_file: ...}}`).
"""


def _key_volume(version: ModelVersion) -> dict[str, Any]:
    # mode 0440: with the pod's fsGroup the file is root:GROUP, readable by the server alone
    items = [{"key": "keys", "path": "keys"}]
    return {
        "name": "keys",
        "secret": {"secretName": keys_secret(version), "defaultMode": 0o440, "items": items},
    }


def _key_env(version: ModelVersion) -> list[dict[str, Any]]:
    secret = {"name": keys_secret(version), "key": "secret", "optional": True}
    return [
        {"name": "KOLLM_API_KEY_FILE", "value": KEY_FILE},
        {"name": "KOLLM_SECRET", "valueFrom": {"secretKeyRef": secret}},
    ]


def container(
    version: ModelVersion, serve: ServeConfig, d: DeployConfig, image: str, root: str = MODEL_ROOT
) -> dict[str, Any]:
    """The server container every Kubernetes unit runs, its keys from the Secret NAME-keys."""
    command = serve_command(version.name, serve, root)
    return {
        "name": "kserve-container" if root != MODEL_ROOT else "kollm",
        "image": image,
        "command": command[:1],
        "args": command[1:],
        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
        "env": [
            {"name": "KOLLM_HOME", "value": DATA_DIR},
            {"name": "HF_HUB_OFFLINE", "value": "1"},
            *_key_env(version),
        ],
        "resources": resources(version, serve, d),
        "readinessProbe": _probe("/health", 10),
        "livenessProbe": _probe("/health", 120),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": USER_ID,
            "allowPrivilegeEscalation": False,
        },
        "volumeMounts": [
            {"name": "data", "mountPath": "/data"},
            {"name": "keys", "mountPath": KEY_DIR, "readOnly": True},
        ],
    }


def k8s_manifests(version: ModelVersion, serve: ServeConfig, d: DeployConfig) -> list[dict]:
    """Deployment and Service (and, for the volume unit, the PersistentVolumeClaim the model
    is copied onto). Prometheus scrapes /metrics through the pod's annotations."""
    server_image, baked_image = image_names(version, d)
    name = _object_name(version)
    main = container(version, serve, d, baked_image if d.unit == "baked" else server_image)
    volumes: list[dict[str, Any]] = [{"name": "data", "emptyDir": {}}, _key_volume(version)]
    manifests: list[dict[str, Any]] = []
    if d.unit == "volume":
        claim = f"{name}-models"
        size = max(1, math.ceil(_size_gib(version) * 2 + 0.5))  # the HF dir and its conversion
        manifests.append(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": claim, "namespace": d.namespace, "labels": _labels(version)},
                "spec": {
                    "accessModes": ["ReadOnlyMany"],
                    "resources": {"requests": {"storage": f"{size}Gi"}},
                },
            }
        )
        volumes.append(
            {"name": "models", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        )
        main["volumeMounts"].append({"name": "models", "mountPath": MODEL_ROOT, "readOnly": True})
    pod = {
        "metadata": {
            "labels": _labels(version),
            "annotations": {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(PORT),
                "prometheus.io/path": "/metrics",
            },
        },
        "spec": {"containers": [main], "volumes": volumes, "securityContext": {"fsGroup": USER_ID}},
    }
    selector = {"app.kubernetes.io/name": "kollm", "app.kubernetes.io/instance": version.name}
    manifests.append(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": d.namespace, "labels": _labels(version)},
            "spec": {
                "replicas": d.replicas_min or 1,
                "selector": {"matchLabels": selector},
                "template": pod,
            },
        }
    )
    manifests.append(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": d.namespace, "labels": _labels(version)},
            "spec": {
                "selector": selector,
                "ports": [{"name": "http", "port": PORT, "targetPort": PORT, "protocol": "TCP"}],
            },
        }
    )
    return manifests


def _size_gib(version: ModelVersion) -> float:
    files = [p for p in Path(version.artifact_path).rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 2**30


def kserve_manifest(version: ModelVersion, serve: ServeConfig, d: DeployConfig) -> dict:
    """An InferenceService: for a GPU (vllm) version KServe's Hugging Face runtime, which serves
    with vLLM; otherwise a custom predictor running the kollm image, the model fetched by
    KServe's storage initializer from `deploy.storage_uri` into /mnt/models, its keys from
    the Secret NAME-keys (KServe's Hugging Face runtime takes no keys: put it behind an
    authenticating gateway)."""
    if not d.storage_uri:
        raise UnitError("deploy.storage_uri: where KServe fetches the model (pvc://, s3://, ...)")
    name = _object_name(version)
    predictor: dict[str, Any] = {"minReplicas": d.replicas_min, "maxReplicas": d.max_replicas}
    if serve.engine == "vllm":
        predictor["model"] = {
            "modelFormat": {"name": "huggingface"},
            "storageUri": d.storage_uri,
            "args": [f"--model_name={version.name}", "--backend=vllm"],
            "resources": resources(version, serve, d),
        }
    else:
        server_image, _ = image_names(version, d)
        main = container(version, serve, d, server_image, root="/mnt")
        main["args"][1] = "/mnt/models"  # the storage initializer's fixed mount point
        main["env"].append({"name": "STORAGE_URI", "value": d.storage_uri})
        # KServe mounts the model; KOLLM_HOME stays in the pod; the keys come from their Secret
        main["volumeMounts"] = [m for m in main["volumeMounts"] if m["name"] == "keys"]
        predictor["containers"] = [main]
        predictor["volumes"] = [_key_volume(version)]
        predictor["securityContext"] = {"fsGroup": USER_ID}  # the Secret's file, group-readable
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": name,
            "namespace": d.namespace,
            "labels": _labels(version),
            "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": str(PORT)},
        },
        "spec": {"predictor": predictor},
    }


def write_manifests(out: Path, manifests: list[dict], filename: str, header: str = "") -> Path:
    """The manifests as one YAML file, after `header` (comment lines)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / filename
    text = "---\n".join(yaml.safe_dump(m, sort_keys=False, allow_unicode=True) for m in manifests)
    path.write_text(header + text, encoding="utf-8")
    return path
