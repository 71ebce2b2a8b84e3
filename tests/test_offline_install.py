"""The air-gapped install (issue 34; docs/deploy/airgapped.md): `make wheelhouse` collects every
wheel the lock needs, `make install OFFLINE=wheelhouse/` installs from it alone.

The real install (a fresh venv, no network) takes minutes, so it runs only where
KOLLM_WHEELHOUSE names a built wheelhouse (.ci/run builds one); the wheelhouse script's checks
and the Makefile's offline commands are checked on every run."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kollm.cluster import llamacpp, schemas

REPO = Path(__file__).resolve().parents[1]
WHEELHOUSE = os.environ.get("KOLLM_WHEELHOUSE")
LOCK = "# a lock\nJinja2==3.1.6\ntyping_extensions==4.16.0\nPyYAML==6.0.3\n"
WHEELS = [
    "jinja2-3.1.6-py3-none-any.whl",
    "typing_extensions-4.16.0-py3-none-any.whl",
    "pyyaml-6.0.3-cp311-cp311-manylinux_2_17_x86_64.whl",
    "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl",
    "setuptools-80.9.0-py3-none-any.whl",
    "wheel-0.45.1-py3-none-any.whl",
    "kollm-0.1.0-py3-none-any.whl",
]


def _house(tmp_path: Path) -> Path:
    """A tiny fake wheelhouse: one file per lock pin, torch, the backend, kollm, fetch/."""
    house = tmp_path / "wheelhouse"
    (house / "fetch").mkdir(parents=True)
    for name in WHEELS:
        (house / name).write_bytes(name.encode())
    for name in (llamacpp.SDIST, schemas.KSERVE_WHEEL):
        (house / "fetch" / name).write_bytes(b"pinned")
    (tmp_path / "lock.txt").write_text(LOCK)
    return house


def _cli(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO / "bench" / "wheelhouse.py"), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_a_complete_wheelhouse_gets_a_manifest_that_verifies(tmp_path):
    house = _house(tmp_path)
    checked = _cli("check", str(house), "--lock", str(tmp_path / "lock.txt"))
    assert checked.returncode == 0, checked.stderr
    lines = (house / "MANIFEST").read_text().splitlines()[1:]
    rows = {line.split("\t")[3]: line.split("\t") for line in lines}
    assert len(rows) == len(WHEELS) + 2
    name, version, digest, _ = rows["pyyaml-6.0.3-cp311-cp311-manylinux_2_17_x86_64.whl"]
    assert (name, version) == ("pyyaml", "6.0.3")
    assert digest == hashlib.sha256(WHEELS[2].encode()).hexdigest()
    assert rows[f"fetch/{llamacpp.SDIST}"][:2] == ["llama-cpp-python", llamacpp.VERSION]
    assert _cli("verify", str(house)).returncode == 0


def test_a_lock_pin_without_its_wheel_is_named_and_no_manifest_written(tmp_path):
    house = _house(tmp_path)
    (house / WHEELS[0]).unlink()  # Jinja2==3.1.6
    (house / WHEELS[1]).rename(house / "typing_extensions-4.15.0-py3-none-any.whl")
    (house / "lxml-6.0.0.tar.gz").write_bytes(b"an sdist")
    (house / "fetch" / schemas.KSERVE_WHEEL).unlink()
    checked = _cli("check", str(house), "--lock", str(tmp_path / "lock.txt"))
    assert checked.returncode != 0
    assert "jinja2==3.1.6: no wheel" in checked.stderr
    assert "typing-extensions==4.16.0: no wheel" in checked.stderr  # a wrong version is no wheel
    assert "lxml-6.0.0.tar.gz: not a wheel" in checked.stderr
    assert f"fetch/{schemas.KSERVE_WHEEL}: missing" in checked.stderr
    assert "pyyaml" not in checked.stderr
    assert not (house / "MANIFEST").exists()


def test_verify_names_a_changed_a_missing_and_an_unlisted_file(tmp_path):
    house = _house(tmp_path)
    assert _cli("check", str(house), "--lock", str(tmp_path / "lock.txt")).returncode == 0
    (house / WHEELS[3]).write_bytes(b"torch, tampered with on the way")
    (house / WHEELS[4]).unlink()
    (house / "extra-1.0-py3-none-any.whl").write_bytes(b"?")
    verified = _cli("verify", str(house))
    assert verified.returncode != 0
    assert f"{WHEELS[3]}: sha256 differs from the MANIFEST" in verified.stderr
    assert f"{WHEELS[4]}: missing" in verified.stderr
    assert "extra-1.0-py3-none-any.whl: not in the MANIFEST" in verified.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_install_offline_gives_pip_only_the_wheelhouse(tmp_path):
    """Every pip of the offline install has no index and no pip config; the fetch steps read
    the wheelhouse's fetch/ (make -n prints the commands, runs nothing)."""
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS"))}
    made = subprocess.run(
        ["make", "-n", "-B", "install", "OFFLINE=wh/", f"VENV={venv}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    house = REPO / "wh"
    pips = [line for line in made.stdout.splitlines() if " -m pip " in line]
    assert len(pips) == 2
    for line in pips:
        assert f"PIP_NO_INDEX=1 PIP_FIND_LINKS={house} PIP_CONFIG_FILE=/dev/null" in line
    fetches = [line for line in made.stdout.splitlines() if " fetch" in line]
    assert len(fetches) == 2
    assert all(line.endswith(f"fetch --from {house}/fetch") for line in fetches)


def test_fetch_from_a_directory_without_the_pinned_file_says_where_it_comes_from(tmp_path):
    with pytest.raises(llamacpp.ConverterMissing, match="make wheelhouse"):
        llamacpp.fetch(tmp_path / "converter", source=tmp_path)
    (tmp_path / llamacpp.SDIST).write_bytes(b"not the pinned sdist")
    with pytest.raises(RuntimeError, match="is not the pinned"):
        llamacpp.fetch(tmp_path / "converter", source=tmp_path)
    assert not (tmp_path / "converter").exists()


def _offline_skip() -> str | None:
    if not WHEELHOUSE:
        return (
            "the real offline install takes minutes: build a wheelhouse (make wheelhouse) and"
            " run with KOLLM_WHEELHOUSE=wheelhouse/ (.ci/run does)"
        )
    if shutil.which("unshare") is None or shutil.which("make") is None:
        return "needs unshare (util-linux) and make"
    if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0:
        return "unshare -n failed (not root?): the network cannot be blocked"
    return None


@pytest.mark.skipif(_offline_skip() is not None, reason=str(_offline_skip()))
def test_kollm_installs_from_the_wheelhouse_and_runs_with_no_network(tmp_path):
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "MAKE", "MFLAGS"))}
    env.pop("PYTHONPATH", None)  # kollm must come from the new venv
    env["KOLLM_HOME"] = str(tmp_path / "home")

    def offline(*command: str) -> subprocess.CompletedProcess:
        command = ("unshare", "-n", *command)
        return subprocess.run(
            command, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800
        )

    house = Path(WHEELHOUSE).resolve()
    made = offline("make", "install", f"OFFLINE={house}", f"VENV={venv}")
    assert made.returncode == 0, made.stdout[-4000:] + made.stderr[-4000:]
    python = str(venv / "bin" / "python")
    no_net = offline(python, "-c", "import socket; socket.create_connection(('pypi.org', 443), 5)")
    assert no_net.returncode != 0  # the install above really had no network
    helped = offline(str(venv / "bin" / "kollm"), "--help")
    assert helped.returncode == 0 and "recipe" in helped.stdout, helped.stderr
    checked = offline(str(venv / "bin" / "kollm"), "recipe", "check", "recipes/demo.yaml")
    assert checked.returncode == 0 and '"kollm-demo"' in checked.stdout, checked.stderr
    torch = offline(python, "-c", "import kollm, torch; print(torch.__version__, kollm.__file__)")
    assert torch.stdout.startswith("2.13.0") and str(REPO / "src") in torch.stdout
    share = venv / "share" / "kollm"
    assert (share / "llama.cpp" / "convert_hf_to_gguf.py").is_file()
    assert (share / f"kserve-{schemas.KSERVE_VERSION}" / "models").is_dir()
