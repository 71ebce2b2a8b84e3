"""`kollm deploy --target docker|k8s|kserve`: the build context's Dockerfiles run the tested
`kollm serve` command line (run here as it is, against the staged model, which starts without
converting), and the manifests fit the Kubernetes and KServe schemas; a manifest that does not
is caught, naming the field. Every unit is locked: its server takes its keys from a Secret or a
mounted key file, and refuses to start on 0.0.0.0 without them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from kollm.cli import app
from kollm.cluster import units
from kollm.cluster.schemas import validate
from kollm.config import DeployConfig, ServeConfig
from kollm.registry import Registry

kubernetes = pytest.importorskip("kubernetes")


@pytest.fixture
def version(local_base):
    return Registry().register("tiny", local_base, base_model="scratch", method="sft")


def _deploy(*args):
    done = CliRunner().invoke(app, ["deploy", "tiny:1", *args])
    assert done.exit_code == 0, done.output
    return done.output


def _cmd(dockerfile: str) -> list[str]:
    return json.loads(re.search(r"^CMD (\[.*\])$", dockerfile, re.M).group(1))


def test_the_docker_context_runs_the_tested_command_line(version, tmp_path):
    from kollm.pipeline.serving import free_port

    out = tmp_path / "ctx"
    _deploy("--target", "docker", "--out", str(out))
    server = (out / "Dockerfile.server").read_text()
    command = _cmd(server)
    assert command == units.serve_command("tiny", ServeConfig())
    assert "USER 10001" in server and "/health" in server and "ARG BASE_IMAGE=" in server
    assert "ARG PIP_INDEX_URL" in server and list((out / "wheels").glob("kollm-*.whl"))
    assert "COPY --chown=10001 model/ /models/" in (out / "Dockerfile.baked").read_text()
    assert "model/" in (out / "Dockerfile.server.dockerignore").read_text().splitlines()
    # the run commands mount the key file the server reads through KOLLM_API_KEY_FILE
    mount = (
        "-v $PWD/keys.txt:/run/secrets/kollm/keys:ro -e KOLLM_API_KEY_FILE=/run/secrets/kollm/keys"
    )
    assert mount in server and mount in (out / "Dockerfile.baked").read_text()
    assert "chmod 600 keys.txt" in server
    converted = [p for p in (out / "model").iterdir() if ".ct2-int8-" in p.name]
    assert len(converted) == 1 and (converted[0] / "model.bin").is_file()
    # the container's command, with only its paths and address made this machine's
    port = free_port()
    local = [str(Path(sys.executable).parent / "kollm"), *command[1:]]
    local[local.index("/models/tiny")] = str(out / "model" / "tiny")
    local[local.index("0.0.0.0")] = "127.0.0.1"
    local[local.index("8000")] = str(port)
    before = sorted(p.name for p in (out / "model").iterdir())
    keys = tmp_path / "keys.txt"  # what the run command mounts
    keys.write_text("unit-key\n")
    keys.chmod(0o600)
    env = {**os.environ, "KOLLM_HOME": str(tmp_path / "data"), "KOLLM_API_KEY_FILE": str(keys)}
    process = subprocess.Popen(local, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                if health.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        assert health.status_code == 200 and "tiny" in health.json()["models"]
        models = f"http://127.0.0.1:{port}/v1/models"
        assert httpx.get(models, timeout=10).status_code == 401
        keyed = httpx.get(models, headers={"authorization": "Bearer unit-key"}, timeout=10)
        assert keyed.status_code == 200
    finally:
        process.terminate()
        process.wait(20)
    assert sorted(p.name for p in (out / "model").iterdir()) == before  # nothing converted


def test_a_unit_s_command_refuses_to_start_without_keys(monkeypatch):
    for name in ("KOLLM_API_KEY", "KOLLM_API_KEY_FILE", "KOLLM_ADMIN_KEY"):
        monkeypatch.delenv(name, raising=False)
    command = units.serve_command("tiny", ServeConfig())
    assert command[command.index("--host") + 1] == "0.0.0.0"
    refused = CliRunner().invoke(app, command[1:])  # as the unit runs it, with no keys given
    assert refused.exit_code != 0 and "with no API keys" in refused.output
    assert "KOLLM_API_KEY_FILE" in refused.output


def _takes_its_keys_from_the_secret(pod_spec, main):
    """The server reads the key file of the Secret kollm-tiny-keys, mounted for its user."""
    assert {"name": "KOLLM_API_KEY_FILE", "value": "/run/secrets/kollm/keys"} in main["env"]
    (secret,) = [e for e in main["env"] if e["name"] == "KOLLM_SECRET"]
    ref = secret["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "kollm-tiny-keys", "key": "secret", "optional": True}
    mount = {"name": "keys", "mountPath": "/run/secrets/kollm", "readOnly": True}
    assert mount in main["volumeMounts"]
    (volume,) = [v for v in pod_spec["volumes"] if v["name"] == "keys"]
    assert volume["secret"]["secretName"] == "kollm-tiny-keys"
    assert volume["secret"]["defaultMode"] == 0o440
    assert pod_spec["securityContext"]["fsGroup"] == 10001


def test_k8s_manifests_fit_the_schema_and_run_the_same_command(version, tmp_path):
    out = tmp_path / "k8s"
    output = _deploy("--target", "k8s", "--out", str(out), "deploy.unit=volume")
    create = "kubectl -n default create secret generic kollm-tiny-keys --from-file=keys=keys.txt"
    assert create in output and create in (out / "k8s.yaml").read_text()
    docs = list(yaml.safe_load_all((out / "k8s.yaml").read_text()))
    assert [d["kind"] for d in docs] == ["PersistentVolumeClaim", "Deployment", "Service"]
    assert all(validate(d) == [] for d in docs)
    deployment = docs[1]
    pod = deployment["spec"]["template"]
    (main,) = pod["spec"]["containers"]
    assert main["command"] + main["args"] == units.serve_command("tiny", ServeConfig())
    assert main["readinessProbe"]["httpGet"]["path"] == "/health"
    assert main["livenessProbe"]["httpGet"]["path"] == "/health"
    assert pod["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    assert main["resources"]["requests"]["memory"].endswith("Gi")
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in main["volumeMounts"]
    assert main["image"] == "kollm:server"
    _takes_its_keys_from_the_secret(pod["spec"], main)


def test_a_gpu_version_gets_cards_from_the_planner(version):
    serve, d = ServeConfig(engine="vllm"), DeployConfig(target="k8s", card="T4")
    (deployment,) = [m for m in units.k8s_manifests(version, serve, d) if m["kind"] == "Deployment"]
    (main,) = deployment["spec"]["template"]["spec"]["containers"]
    assert main["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert validate(deployment) == []
    with pytest.raises(units.UnitError, match=r"deploy\.card"):
        units.k8s_manifests(version, serve, DeployConfig(target="k8s"))


def test_kserve_inference_services_fit_kserve_s_schema(version, tmp_path):
    out = tmp_path / "kserve"
    _deploy("--target", "kserve", "--out", str(out), "deploy.storage_uri=pvc://models/tiny")
    (isvc,) = yaml.safe_load_all((out / "kserve.yaml").read_text())
    assert validate(isvc) == []
    assert "create secret generic kollm-tiny-keys" in (out / "kserve.yaml").read_text()
    (main,) = isvc["spec"]["predictor"]["containers"]
    assert main["args"][1] == "/mnt/models" and main["command"] == ["kollm"]
    _takes_its_keys_from_the_secret(isvc["spec"]["predictor"], main)
    assert {"name": "STORAGE_URI", "value": "pvc://models/tiny"} in main["env"]
    gpu = units.kserve_manifest(
        version,
        ServeConfig(engine="vllm"),
        DeployConfig(target="kserve", card="A100-80GB", storage_uri="pvc://models/tiny"),
    )
    assert gpu["spec"]["predictor"]["model"]["modelFormat"] == {"name": "huggingface"}
    assert validate(gpu) == []
    refused = CliRunner().invoke(app, ["deploy", "tiny:1", "--target", "kserve", "--out", str(out)])
    assert refused.exit_code != 0 and "deploy.storage_uri" in refused.output


def test_the_schemas_catch_what_does_not_fit(version):
    (deployment,) = [
        m
        for m in units.k8s_manifests(version, ServeConfig(), DeployConfig(target="k8s"))
        if m["kind"] == "Deployment"
    ]
    main = deployment["spec"]["template"]["spec"]["containers"][0]
    main["readinessProbe"]["httpGet"]["pathh"] = "/health"
    main["ports"][0]["containerPort"] = "eight thousand"
    errors = validate(deployment)
    assert any("pathh" in e for e in errors) and any("containerPort" in e for e in errors)
    isvc = units.kserve_manifest(
        version, ServeConfig(), DeployConfig(target="kserve", storage_uri="s3://b/tiny")
    )
    isvc["spec"]["predictor"]["replicas"] = 2  # KServe calls it minReplicas
    isvc["spec"]["predictor"]["containers"][0]["imagePullPolicy"] = ["Always"]
    errors = validate(isvc)
    assert any("predictor.replicas: not a field of V1beta1PredictorSpec" in e for e in errors)
    assert any("imagePullPolicy" in e for e in errors)
