"""Everything an air-gapped `make install OFFLINE=wheelhouse/` needs, in one directory
(issue 34; docs/deploy/airgapped.md). On a connected machine:

    .venv/bin/python bench/wheelhouse.py build wheelhouse --torch 'torch==2.13.0'  # make wheelhouse

It holds, as wheels only: the torch build TORCH names with its dependencies, every pin of
requirements/lock.txt (`pip wheel` builds the few that PyPI has only as sdists), setuptools and
wheel (kollm's build backend: the install builds kollm itself, offline) and kollm's own wheel.
Under fetch/: what make install's two fetch steps read (`--from`): llama-cpp-python's sdist
(llama.cpp's GGUF converter) and KServe's wheel (its schema models), both sha256-pinned.
MANIFEST lists every file: name, version, sha256, path. On the air-gapped side, before
installing (stdlib only, any python3):

    python3 bench/wheelhouse.py verify wheelhouse
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BACKEND = ("setuptools>=68", "wheel")  # pyproject.toml's build-system; wheel for older pips
MANIFEST = "MANIFEST"
FETCH = "fetch"


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse(filename: str) -> tuple[str, str]:
    """(normalised name, version) of a wheel or sdist file name."""
    if filename.endswith(".whl"):
        name, version = filename[:-4].split("-")[:2]
    else:
        name, _, version = filename.removesuffix(".tar.gz").rpartition("-")
    return norm(name), version


def locked(lock: Path) -> dict[str, str]:
    pins = {}
    for line in lock.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[norm(name)] = version.strip()
    return pins


def problems(house: Path, lock: Path, required: list[str]) -> list[str]:
    """What the wheelhouse lacks: a lock pin without its wheel, a required package (torch,
    the backend, kollm, fetch/ files) missing, anything but a wheel beside the wheels."""
    files = [p.name for p in house.iterdir() if p.is_file() and p.name != MANIFEST]
    found = {parse(name) for name in files if name.endswith(".whl")}
    names = {name for name, _ in found}
    out = [f"{name}=={v}: no wheel" for name, v in locked(lock).items() if (name, v) not in found]
    out += [f"{name}: no wheel" for name in required if norm(name) not in names]
    out += [f"{name}: not a wheel" for name in files if not name.endswith(".whl")]
    fetched = house / FETCH
    out += [f"{FETCH}/{name}: missing" for name in _fetched() if not (fetched / name).is_file()]
    return out


def manifest_lines(house: Path) -> list[str]:
    lines = ["# name\tversion\tsha256\tpath (bench/wheelhouse.py verify checks it)"]
    for path in sorted(p for p in house.rglob("*") if p.is_file() and p.name != MANIFEST):
        rel = path.relative_to(house).as_posix()
        lines.append("\t".join([*parse(path.name), _sha256(path), rel]))
    return lines


def verify(house: Path) -> list[str]:
    """Every file the MANIFEST lists, with its sha256, and no file it does not list."""
    listed = {}
    for line in (house / MANIFEST).read_text().splitlines():
        if line and not line.startswith("#"):
            _, _, digest, rel = line.split("\t")
            listed[rel] = digest
    out = []
    for rel, digest in listed.items():
        path = house / rel
        if not path.is_file():
            out.append(f"{rel}: missing")
        elif _sha256(path) != digest:
            out.append(f"{rel}: sha256 differs from the MANIFEST")
    present = {p.relative_to(house).as_posix() for p in house.rglob("*") if p.is_file()}
    out += [f"{rel}: not in the MANIFEST" for rel in sorted(present - set(listed) - {MANIFEST})]
    return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fetched() -> dict[str, tuple[str, str]]:
    """fetch/ file -> (pip requirement, pinned sha256), from the modules that read them."""
    from kollm.cluster import llamacpp, schemas

    return {
        llamacpp.SDIST: (f"llama-cpp-python=={llamacpp.VERSION}", llamacpp.SDIST_SHA256),
        schemas.KSERVE_WHEEL: (f"kserve=={schemas.KSERVE_VERSION}", schemas.KSERVE_SHA256),
    }


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def build(house: Path, torch: str, lock: Path) -> list[str]:
    """Fill `house` (pip skips what is already there); returns problems() afterwards."""
    house.mkdir(parents=True, exist_ok=True)
    wheel = ["wheel", "-q", "-w", str(house), "-c", str(lock)]
    _pip(*wheel, *shlex.split(torch))  # torch and its own dependencies (nvidia-* for CUDA)
    torch_name = re.match(r"[\w.-]+", shlex.split(torch)[0]).group()
    torch_wheel = _only(house, torch_name)
    # kollm[dev] with the torch file just saved, so no other torch build is resolved
    _pip(*wheel, "--find-links", str(house), str(torch_wheel), f"{REPO}[dev]")
    _pip("wheel", "-q", "-w", str(house), *BACKEND)
    for name, (requirement, digest) in _fetched().items():
        target = house / FETCH / name
        if not target.is_file():
            binary = ["--no-binary", ":all:"] if name.endswith(".tar.gz") else []
            _pip("download", "-q", "--no-deps", *binary, "-d", str(target.parent), requirement)
        if _sha256(target) != digest:
            raise SystemExit(f"{target}: sha256 is not the pinned {digest}")
    return problems(house, lock, [torch_name, "setuptools", "wheel", "kollm"])


def _only(house: Path, name: str) -> Path:
    wheels = [p for p in house.glob("*.whl") if parse(p.name)[0] == norm(name)]
    if len(wheels) != 1:
        raise SystemExit(f"{house}: {len(wheels)} {name} wheels; empty it and build again")
    return wheels[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["build", "check", "verify"])
    parser.add_argument("house", type=Path)
    parser.add_argument("--torch", default="torch==2.13.0", help="the Makefile's TORCH")
    parser.add_argument("--lock", type=Path, default=REPO / "requirements" / "lock.txt")
    args = parser.parse_args()
    if args.command == "verify":
        found = verify(args.house)
    else:
        if args.command == "build":
            found = build(args.house, args.torch, args.lock)
        else:
            found = problems(args.house, args.lock, ["torch", "setuptools", "wheel", "kollm"])
        if not found:
            (args.house / MANIFEST).write_text("\n".join(manifest_lines(args.house)) + "\n")
    for line in found:
        print(f"{args.house}: {line}", file=sys.stderr)
    if found:
        raise SystemExit(f"{len(found)} problem(s) in {args.house}")
    count = sum(1 for p in args.house.rglob("*") if p.is_file()) - 1
    print(f"{args.house}: {count} files, each in {args.house / MANIFEST} with its sha256")


if __name__ == "__main__":
    main()
