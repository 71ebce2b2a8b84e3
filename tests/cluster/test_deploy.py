import json
import os
import signal
import sys

import httpx
import pytest
from typer.testing import CliRunner

from kollm.cli import app
from kollm.cluster.deploy import ServeClient

CHAT = {
    "model": "tiny",
    "messages": [{"role": "user", "content": "회의 일정 알려줘"}],
    "max_tokens": 4,
}


def _deploy(ray_cluster, *args):
    command = ["deploy", "tiny@production", "--address", ray_cluster.dashboard]
    command += [f"deploy.port={ray_cluster.serve_port}", "serve.log_requests=false", *args]
    return CliRunner().invoke(app, command)


def test_two_replicas_share_the_requests_and_survive_one_killed(
    ray_cluster, served_home, monkeypatch
):
    monkeypatch.setenv("KOLLM_HOME", str(served_home))
    result = _deploy(
        ray_cluster, "deploy.min_replicas=2", "deploy.max_replicas=2", "deploy.replica_cpus=0.5"
    )
    assert result.exit_code == 0, result.output
    url = f"http://127.0.0.1:{ray_cluster.serve_port}/v1"
    assert f"as tiny (always-on, 2-2 replicas) at {url}" in result.output
    try:
        pids = set()
        for _ in range(16):
            response = httpx.post(f"{url}/chat/completions", json=CHAT, timeout=60)
            assert response.status_code == 200, response.text
            pids.add(int(response.headers["x-kollm-replica-pid"]))
        assert len(pids) == 2  # Ray's router spread the requests over both replicas
        os.kill(pids.pop(), signal.SIGKILL)
        for _ in range(10):
            response = httpx.post(f"{url}/chat/completions", json=CHAT, timeout=60)
            assert response.status_code == 200, response.text
    finally:
        removed = _deploy(ray_cluster, "--delete")
    assert (
        removed.exit_code == 0 and "tiny" not in ServeClient(ray_cluster.dashboard).applications()
    )


def test_scale_to_zero_starts_a_replica_for_the_first_request(
    ray_cluster, served_home, monkeypatch
):
    monkeypatch.setenv("KOLLM_HOME", str(served_home))
    settings = ["deploy.tier=scale-to-zero", "deploy.app_name=tiny-s2z"]
    settings += ["deploy.route_prefix=/s2z", "deploy.replica_cpus=0.5"]
    result = _deploy(ray_cluster, *settings)
    assert result.exit_code == 0, result.output
    try:
        info = ServeClient(ray_cluster.dashboard).applications()["tiny-s2z"]
        assert info["deployments"]["kollm"]["replicas"] == []  # nothing runs while idle
        url = f"http://127.0.0.1:{ray_cluster.serve_port}/s2z/v1"
        cold = httpx.post(f"{url}/chat/completions", json={**CHAT, "model": "tiny"}, timeout=300)
        assert cold.status_code == 200, cold.text
        assert float(cold.headers["x-kollm-replica-start-s"]) > 0  # the reported cold start
        warm = httpx.post(f"{url}/chat/completions", json=CHAT, timeout=60)
        assert warm.headers["x-kollm-replica-pid"] == cold.headers["x-kollm-replica-pid"]
    finally:
        _deploy(ray_cluster, *settings, "--delete")


def test_the_batch_tier_is_a_ray_job_over_a_file(ray_cluster, served_home, tmp_path, monkeypatch):
    from kollm.cluster.ray_jobs import RayExecutor

    monkeypatch.setenv("KOLLM_HOME", str(served_home))
    requests = tmp_path / "requests.jsonl"
    rows = [{"id": 1, "prompt": "오늘 회의는"}, {"id": 2, "messages": [CHAT["messages"][0]]}]
    requests.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    out = tmp_path / "answers.jsonl"
    result = _deploy(
        ray_cluster,
        "deploy.tier=batch",
        f"deploy.input={requests}",
        f"deploy.output={out}",
        "--python",
        sys.executable,
    )
    assert result.exit_code == 0, result.output
    job_id = int(result.output.split("batch job ")[1].split()[0])
    job = RayExecutor(ray_cluster.dashboard, served_home).wait(job_id, 300)
    assert job["status"] == "succeeded"
    answers = [json.loads(line) for line in out.read_text().splitlines()]
    assert [a["id"] for a in answers] == [1, 2]
    assert all(a["model_version"] == "tiny:1" and "output" in a for a in answers)


def test_deploy_errors_name_the_setting(served_home, monkeypatch):
    monkeypatch.setenv("KOLLM_HOME", str(served_home))
    runner = CliRunner()
    batch = runner.invoke(app, ["deploy", "tiny@production", "deploy.tier=batch"])
    assert batch.exit_code == 2 and "tier batch needs input and output" in batch.output
    zero = runner.invoke(
        app, ["deploy", "tiny@production", "deploy.tier=scale-to-zero", "deploy.min_replicas=1"]
    )
    assert zero.exit_code == 2 and "min_replicas must be 0" in zero.output
    gone = runner.invoke(app, ["deploy", "tiny@production", "--address", "http://127.0.0.1:1"])
    assert gone.exit_code == 2 and "cannot reach the Ray cluster" in gone.output
    unknown = runner.invoke(app, ["deploy", "nope@production", "--address", "http://127.0.0.1:1"])
    assert unknown.exit_code == 2 and "nope" in unknown.output


def test_the_vllm_engine_deploys_ray_serve_llm(served_home):
    from kollm.cluster.deploy import application
    from kollm.config import DeployConfig, ServeConfig
    from kollm.registry import Registry

    version = Registry(served_home).get("tiny@production")
    deploy = DeployConfig(tier="scale-to-zero", max_replicas=4, replica_gpus=1)
    config = application(version, "tiny@production", deploy, ServeConfig(engine="vllm"), "/h")
    assert config["import_path"] == "ray.serve.llm:build_openai_app"
    llm = config["args"]["llm_configs"][0]
    assert llm["model_loading_config"] == {
        "model_id": "tiny",
        "model_source": version.artifact_path,
    }
    scaling = llm["deployment_config"]["autoscaling_config"]
    assert scaling["min_replicas"] == 0 and scaling["max_replicas"] == 4


def test_batch_generates_over_a_file_and_names_a_bad_line(served_home, tmp_path):
    from kollm.serve.batch import BatchInputError, generate_file

    requests = tmp_path / "in.jsonl"
    requests.write_text(
        '{"prompt": "안녕"}\n\n{"messages": [{"role": "user", "content": "요약"}]}\n'
    )
    out = tmp_path / "out.jsonl"
    assert generate_file("tiny@production", requests, out, home=served_home) == 2
    assert len(out.read_text().splitlines()) == 2
    requests.write_text('{"prompt": "안녕"}\n{"text": 1}\n')
    with pytest.raises(BatchInputError, match=r"in\.jsonl: line 2: expected an object"):
        generate_file("tiny@production", requests, tmp_path / "bad.jsonl", home=served_home)
    assert not (tmp_path / "bad.jsonl").exists()


def test_a_ray_replica_builds_its_server_with_the_adapters_and_domain_guards(served_home):
    from kollm.cluster.deploy import application
    from kollm.config import DeployConfig, DomainConfig, RagConfig, ServeConfig
    from kollm.registry import Registry
    from kollm.serve.ray_app import replica_config
    from kollm.serve.server import build_manager

    serve = ServeConfig(
        engine="transformers",
        max_batch=4,
        adapters={"civil": "/srv/adapters/civil"},
        domains={"tiny": DomainConfig(keywords=["예약"])},
        rag="civil-docs",
    )
    version = Registry(served_home).get("tiny@production")
    rag = RagConfig(top_k=2, min_score=1.5)
    args = application(version, "tiny@production", DeployConfig(), serve, str(served_home), rag)
    args = json.loads(json.dumps(args["args"]))  # as Ray hands the args over
    cfg = replica_config(args)
    assert cfg.models == ["tiny@production"] and cfg.max_batch == 4 and cfg.rag == "civil-docs"
    assert RagConfig.model_validate(args["rag_settings"]) == rag
    assert cfg.adapters == {"civil": "/srv/adapters/civil"}
    manager = build_manager(cfg, Registry(served_home))
    assert manager.adapters == {"civil": "/srv/adapters/civil"}
    assert manager.guards["tiny"].keywords == ["예약"]


def test_a_ray_replica_takes_its_keys_from_its_args_and_environment(
    served_home, tmp_path, monkeypatch
):
    from kollm.cluster.deploy import application
    from kollm.config import DeployConfig, ServeConfig
    from kollm.registry import Registry
    from kollm.serve.ray_app import replica_access

    keys = tmp_path / "keys.txt"  # on storage every node sees
    keys.write_text("k-view viewer\nk-admin admin 관리자\n")
    keys.chmod(0o600)
    monkeypatch.setenv("KOLLM_SECRET_FILE", str(tmp_path / "secret"))
    version = Registry(served_home).get("tiny@production")
    serve = ServeConfig(api_key_file=str(keys))
    config = application(version, "tiny@production", DeployConfig(), serve, str(served_home))
    assert config["runtime_env"]["env_vars"]["KOLLM_SECRET_FILE"] == str(tmp_path / "secret")
    args = json.loads(json.dumps(config["args"]))  # as Ray hands the args over
    access = replica_access(args, env={"KOLLM_API_KEY": "k-env"})
    assert access.api_keys == ["k-env", "k-view", "k-admin"] and access.admin_keys == ["k-admin"]
    assert access.key_names == {"k-admin": "관리자"} and access.secret is None
    from_env = replica_access({}, env={"KOLLM_API_KEY_FILE": str(keys), "KOLLM_SECRET": "s"})
    assert from_env.admin_keys == ["k-admin"] and from_env.secret == b"s"


def test_deploying_on_a_public_address_without_keys_is_refused(served_home, monkeypatch):
    monkeypatch.setenv("KOLLM_HOME", str(served_home))
    monkeypatch.delenv("KOLLM_API_KEY_FILE", raising=False)
    command = ["deploy", "tiny@production", "--address", "http://127.0.0.1:1"]
    refused = CliRunner().invoke(app, [*command, "deploy.host=0.0.0.0"])
    assert refused.exit_code == 2 and "refusing to serve on 0.0.0.0 with no API keys" in (
        refused.output
    )
    assert "serve.api_key_file" in refused.output and "--allow-no-keys" in refused.output
    allowed = CliRunner().invoke(app, [*command, "deploy.host=0.0.0.0", "--allow-no-keys"])
    assert "cannot reach the Ray cluster" in allowed.output  # went on to the cluster
