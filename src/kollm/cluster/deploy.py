"""`kollm deploy`: a registered model as a Ray Serve application, at one of three cost tiers.

The application is declared in Ray Serve's config format and sent to the cluster's dashboard
(`PUT /api/serve/applications/`, the REST API behind `serve deploy`), so deploying needs only
the dashboard address, as `kollm jobs --executor ray` does, and Ray's token is passed the same
way. The PUT declares every application at once, so the ones already running are sent back as
they are. CPU engines run replicas of kollm's own server (`kollm.serve.ray_app`); the vllm
engine uses Ray Serve LLM's OpenAI app. The batch tier is no server but a job: `kollm batch`
over the input file, on the Ray cluster or this machine.

Keys: a replica reads the key file the recipe's `serve.api_key_file` or the environment's
KOLLM_API_KEY_FILE names (a path on storage every node sees; the variable is passed on to the
replicas), and KOLLM_SECRET_FILE likewise. Raw keys are not passed: Ray shows an application's
environment on its dashboard.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import httpx

from kollm.config import DeployConfig, RagConfig, ServeConfig
from kollm.registry import ModelVersion

SERVE_API = "/api/serve/applications/"
PASSED_ENV = (
    "KOLLM_HOME",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "KOLLM_API_KEY_FILE",
    "KOLLM_SECRET_FILE",
)


class DeployError(RuntimeError):
    """The cluster cannot be reached, refused the application, or the application failed."""


def has_keys(serve: ServeConfig) -> bool:
    """Whether the replicas of `serve` read a key file (kollm's app; Ray Serve LLM's takes none)."""
    named = serve.api_key_file or os.environ.get("KOLLM_API_KEY_FILE")
    return serve.engine != "vllm" and bool(named)


def autoscaling(deploy: DeployConfig) -> dict[str, Any]:
    """Ray Serve's autoscaling_config from the recipe's tier settings."""
    return {
        "min_replicas": deploy.replicas_min,
        "initial_replicas": deploy.replicas_min,
        "max_replicas": deploy.max_replicas,
        "target_ongoing_requests": deploy.target_ongoing_requests,
        "downscale_delay_s": deploy.idle_s,
        "upscale_delay_s": 2.0,  # a queued request should not wait long for a second replica
    }


def application(
    version: ModelVersion,
    ref: str,
    deploy: DeployConfig,
    serve: ServeConfig,
    home: str,
    rag: RagConfig | None = None,
) -> dict[str, Any]:
    """One application of Ray Serve's config for the model `version` (reached as `ref`);
    `rag` is the recipe's retrieval section, for `serve.rag` and requests naming a
    collection (its store and encoder dirs must be on storage the cluster sees)."""
    name = deploy.app_name or version.name
    env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
    env["KOLLM_HOME"] = home
    if serve.engine == "vllm":  # Ray Serve LLM: vLLM engines behind its OpenAI-compatible router
        llm = {
            "model_loading_config": {"model_id": name, "model_source": version.artifact_path},
            "deployment_config": {"autoscaling_config": autoscaling(deploy)},
            "engine_kwargs": {"max_num_seqs": serve.max_batch},
        }
        return {
            "name": name,
            "route_prefix": deploy.route_prefix,
            "import_path": "ray.serve.llm:build_openai_app",
            "args": {"llm_configs": [llm]},
            "runtime_env": {"env_vars": env},
        }
    # The recipe's whole serve section (adapters and domain guards included), as a replica
    # builds its server from it; the files it names must be on storage the cluster sees.
    args = {
        **serve.model_dump(mode="json", exclude={"host", "port", "models"}),
        "models": [ref],
        "home": home,
        "rag_settings": (rag or RagConfig()).model_dump(mode="json"),
    }
    return {
        "name": name,
        "route_prefix": deploy.route_prefix,
        "import_path": "kollm.serve.ray_app:build",
        "args": args,
        "runtime_env": {"env_vars": env},
        "deployments": [
            {
                "name": "kollm",
                "autoscaling_config": autoscaling(deploy),
                "ray_actor_options": {
                    "num_cpus": deploy.replica_cpus,
                    "num_gpus": deploy.replica_gpus,
                },
            }
        ],
    }


@dataclass
class ServeClient:
    """Ray Serve's REST API on the dashboard address."""

    address: str
    token: str | None = None

    def _call(self, method: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        token = self.token or os.environ.get("RAY_AUTH_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            response = httpx.request(
                method, self.address.rstrip("/") + SERVE_API, json=body, headers=headers, timeout=60
            )
        except httpx.HTTPError as err:
            message = f"--address {self.address}: cannot reach the Ray cluster: {err}"
            raise DeployError(message) from err
        if response.status_code >= 400:
            raise DeployError(f"Ray Serve refused ({response.status_code}): {response.text[:500]}")
        return response.json() if response.content else {}

    def applications(self) -> dict[str, Any]:
        return self._call("GET").get("applications") or {}

    def _others(self, name: str) -> list[dict[str, Any]]:
        """The deployed configs of every application but `name`."""
        return [
            info["deployed_app_config"]
            for other, info in self.applications().items()
            if other != name and info.get("deployed_app_config")
        ]

    def put(self, app: dict[str, Any], http: dict[str, Any]) -> None:
        """Declare `app`, keeping every other running application as it was deployed."""
        kept = self._others(app["name"])
        self._call("PUT", {"http_options": http, "applications": [*kept, app]})

    def delete(self, name: str, timeout_s: float = 120) -> None:
        if name not in self.applications():
            raise DeployError(f"no application {name!r} on {self.address}")
        self._call("PUT", {"applications": self._others(name)})
        deadline = time.monotonic() + timeout_s
        while name in self.applications():  # Ray deletes asynchronously
            if time.monotonic() > deadline:
                raise DeployError(f"application {name} still there after {timeout_s:.0f} s")
            time.sleep(0.5)

    def wait_running(self, name: str, timeout_s: float = 300) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            info = self.applications().get(name)
            status = (info or {}).get("status")
            if status == "RUNNING":
                return info
            if status in ("DEPLOY_FAILED", "UNHEALTHY"):
                raise DeployError(f"application {name}: {status}: {info.get('message', '')}")
            time.sleep(1.0)
        raise DeployError(f"application {name} not running after {timeout_s:.0f} s")


def deploy_to_ray(
    version: ModelVersion,
    ref: str,
    deploy: DeployConfig,
    serve: ServeConfig,
    home: str,
    client: ServeClient,
    wait_s: float = 300,
    rag: RagConfig | None = None,
) -> str:
    """Deploy and wait until Ray says RUNNING; returns the application's URL."""
    app = application(version, ref, deploy, serve, home, rag)
    client.put(app, {"host": deploy.host, "port": deploy.port})
    if wait_s > 0:
        client.wait_running(app["name"], wait_s)
    prefix = deploy.route_prefix.rstrip("/")
    return f"http://{deploy.host}:{deploy.port}{prefix}/v1"
