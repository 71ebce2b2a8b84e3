"""The store under KOLLM_HOME: versions found from any working directory, private files, and
nothing half-written left by a registration that failed."""

from __future__ import annotations

import errno
import sqlite3
import stat
from contextlib import closing
from pathlib import Path

import pytest

from kollm import artifacts
from kollm.registry import Registry, RegistryError
from kollm.store import migrations, open_store


def _model(path):
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"\x00" * 64)
    (path / "config.json").write_text("{}")
    (path / "tokenizer.json").write_text("{}")
    return path


def test_a_version_registered_under_a_relative_home_checks_out_from_another_dir(
    tmp_path, monkeypatch
):
    site, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    model = _model(site / "run" / "model")
    monkeypatch.chdir(site)
    monkeypatch.setenv("KOLLM_HOME", ".kollm")  # the default
    Registry().register("tiny", "run/model")

    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("KOLLM_HOME", str(site / ".kollm"))
    stored = Path(Registry().checkout("tiny:1").artifact_path)  # its files verified
    assert stored.parent == site / ".kollm" / "artifacts"
    assert sorted(p.name for p in stored.iterdir()) == sorted(p.name for p in model.iterdir())


def test_rows_stored_relative_to_an_old_working_dir_are_moved_under_the_home(tmp_path, monkeypatch):
    site, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    model = _model(site / "run" / "model")
    monkeypatch.chdir(site)
    older = [m for m in migrations.MIGRATIONS if not m[0].startswith("020")]
    monkeypatch.setattr(migrations, "MIGRATIONS", older)  # a store written before 020
    _, db = open_store(".kollm")
    hashes = artifacts.file_hashes(model)
    stored = artifacts.store_artifact(model, Path(".kollm/artifacts"), hashes)
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute(
            "INSERT INTO model_versions (name, version, artifact_path, weights_sha256,"
            " metrics, kollm_version, created_at, files) VALUES (?,?,?,?,?,?,?,?)",
            ("tiny", 1, str(stored), artifacts.weights_sha256(model), "{}", "0", "x", "{}"),
        )
    assert str(stored).startswith(".kollm/artifacts/")  # as a relative KOLLM_HOME stored it
    monkeypatch.undo()

    monkeypatch.chdir(elsewhere)
    registry = Registry(site / ".kollm")  # migrates
    assert registry.checkout("tiny:1").artifact_path == str(site / stored)
    with closing(sqlite3.connect(registry.path)) as conn:
        (kept,) = conn.execute("SELECT artifact_path FROM model_versions").fetchone()
    assert kept == f"artifacts/{stored.name}"


def test_the_home_kollm_creates_is_private(tmp_path):
    home = tmp_path / "new" / "home"
    registry = Registry(home)
    with closing(sqlite3.connect(registry.path)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE scratch (x)")  # the -wal and -shm exist while it is open
        modes = {
            p.name: stat.S_IMODE(p.stat().st_mode) for p in home.iterdir() if p.name != "artifacts"
        }
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert modes == {"registry.db": 0o600, "registry.db-wal": 0o600, "registry.db-shm": 0o600}


def test_a_copy_that_fails_half_way_leaves_no_staged_files(tmp_path, monkeypatch):
    model = _model(tmp_path / "model")
    placed = []
    real = artifacts._place

    def place(source, target):
        if placed:
            raise OSError(errno.ENOSPC, "No space left on device")
        placed.append(target)
        real(source, target)

    monkeypatch.setattr(artifacts, "_place", place)
    registry = Registry(tmp_path / "home")
    with pytest.raises(RegistryError, match="No space left on device"):
        registry.register("tiny", model)
    assert placed and list(registry.artifacts_dir.iterdir()) == []
    assert registry.list() == []
