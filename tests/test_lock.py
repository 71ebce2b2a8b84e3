"""The committed lock is what this environment runs: every locked version is the installed one,
and every dependency kollm declares is locked."""

from __future__ import annotations

import re
from importlib import metadata

from packaging.requirements import Requirement


def _locked(repo) -> dict[str, str]:
    pins = {}
    for line in (repo / "requirements" / "lock.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[_norm(name)] = version.strip()
    return pins


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_locked_package_is_installed_at_its_locked_version(repo):
    pins = _locked(repo)
    assert len(pins) > 50
    wrong = {
        name: (version, metadata.version(name))
        for name, version in pins.items()
        if metadata.version(name) != version
    }
    assert not wrong, f"installed differs from requirements/lock.txt: {wrong}"


def test_every_declared_dependency_is_locked(repo):
    pins = _locked(repo)
    requires = metadata.requires("kollm") or []
    declared = {
        _norm(Requirement(r).name) for r in requires if "extra ==" not in r or 'extra == "dev"' in r
    }
    declared.discard("torch")  # pinned by the Makefile's TORCH: a CPU or a CUDA build
    assert declared - set(pins) == set()
