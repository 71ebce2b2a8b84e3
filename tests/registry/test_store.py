import multiprocessing as mp
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from kollm.registry import Registry, RegistryError
from kollm.store import MIGRATIONS, connect

# every test runs on SQLite and on PostgreSQL (tests/postgres.py)
pytestmark = pytest.mark.usefixtures("store_backend")


@pytest.fixture
def artifact(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights-v1")
    (model / "config.json").write_text("{}")
    return model


def test_register_records_lineage_and_numbers_versions(tmp_path, artifact):
    reg = Registry(tmp_path / "home")
    v1 = reg.register(
        "demo",
        artifact,
        base_model="scratch",
        method="sft",
        data_manifest="abc",
        recipe_text="name: demo\n",
        metrics={"rouge1": 0.3},
    )
    (artifact / "model.safetensors").write_bytes(b"weights-v2")
    v2 = reg.register("demo", artifact, parent_version=1)
    assert (v1.version, v2.version) == (1, 2)
    assert v1.weights_sha256 != v2.weights_sha256
    assert v1.metrics == {"rouge1": 0.3} and v1.recipe_sha256 and v1.base_model == "scratch"
    assert reg.get("demo").version == 2 and reg.get("demo:1").data_manifest == "abc"
    assert [v.ref for v in reg.list()] == ["demo:1", "demo:2"]


def test_promote_rollback_and_the_append_only_log(tmp_path, artifact):
    reg = Registry(tmp_path)
    for _ in range(3):
        reg.register("demo", artifact)
    reg.promote("demo", 1)
    reg.promote("demo", 2)
    reg.promote("demo", 3)
    assert reg.get("demo@production").version == 3
    assert reg.rollback("demo").version == 2
    assert reg.rollback("demo").version == 1
    with pytest.raises(RegistryError, match="no earlier version"):
        reg.rollback("demo")
    assert reg.get("demo:1").aliases == ["production"]
    log = reg.alias_log("demo")
    assert [(e["from_version"], e["to_version"], e["action"]) for e in log] == [
        (None, 1, "promote"),
        (1, 2, "promote"),
        (2, 3, "promote"),
        (3, 2, "rollback"),
        (2, 1, "rollback"),
    ]
    with (
        closing(connect(reg.path)) as conn,
        pytest.raises(sqlite3.DatabaseError, match="append-only"),
    ):
        conn.execute("DELETE FROM alias_log")


def test_unknown_references_are_clear_errors(tmp_path, artifact):
    reg = Registry(tmp_path)
    with pytest.raises(RegistryError, match="no model named 'nope'"):
        reg.get("nope")
    reg.register("demo", artifact)
    with pytest.raises(RegistryError, match="has no alias 'staging'"):
        reg.get("demo@staging")
    with pytest.raises(RegistryError, match="no version 9"):
        reg.promote("demo", 9)
    (tmp_path / "empty").mkdir()
    with pytest.raises(RegistryError, match="no weight files"):
        reg.register("demo", tmp_path / "empty")


def test_aliases_are_validated_like_names_in_promote_and_rollback(tmp_path, artifact):
    reg = Registry(tmp_path)
    reg.register("demo", artifact)
    for alias in ("", "prod uction", "a/b", "x@y", "<script>", "-lead"):
        with pytest.raises(RegistryError, match="invalid alias"):
            reg.promote("demo", 1, alias)
        with pytest.raises(RegistryError, match="invalid alias"):
            reg.rollback("demo", alias)
    assert reg.alias_log("demo") == []  # nothing half-written
    reg.promote("demo", 1, "canary-2.b_1")
    with pytest.raises(RegistryError, match="no earlier version to roll back to"):
        reg.rollback("demo", "canary-2.b_1")


def test_migrations_are_recorded_once(tmp_path, store_backend):
    Registry(tmp_path)
    Registry(tmp_path)
    with closing(connect(tmp_path / "registry.db")) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM _migrations ORDER BY name")]
    assert names == [name for name, _ in MIGRATIONS]
    if store_backend == "sqlite":
        with sqlite3.connect(tmp_path / "registry.db") as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def _register_many(home: str, artifact: str, count: int) -> None:
    reg = Registry(home)
    for _ in range(count):
        reg.register("shared", artifact)


def test_concurrent_registrations_lose_nothing(tmp_path, artifact):
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=_register_many, args=(str(tmp_path), str(artifact), 8)) for _ in range(4)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    versions = [v.version for v in Registry(tmp_path).list("shared")]
    assert versions == list(range(1, 33))


def test_a_version_is_a_stored_copy_that_later_writes_cannot_change(tmp_path, artifact):
    reg = Registry(tmp_path / "home")
    v1 = reg.register("demo", artifact)
    (artifact / "model.safetensors").write_bytes(b"weights-v2")  # the run dir, rewritten in place
    v2 = reg.register("demo", artifact)
    assert v1.artifact_path != str(artifact) and v1.artifact_path != v2.artifact_path
    stored = reg.checkout("demo:1")
    assert (Path(stored.artifact_path) / "model.safetensors").read_bytes() == b"weights-v1"
    assert set(stored.files) == {"model.safetensors", "config.json"}


def test_a_tampered_stored_file_is_refused_by_name(tmp_path, artifact):
    reg = Registry(tmp_path / "home")
    version = reg.register("demo", artifact)
    (Path(version.artifact_path) / "model.safetensors").write_bytes(b"evil")
    with pytest.raises(RegistryError, match=r"demo:1: .*model\.safetensors changed"):
        reg.checkout("demo:1")
    (Path(version.artifact_path) / "config.json").unlink()
    (Path(version.artifact_path) / "model.safetensors").write_bytes(b"weights-v1")
    with pytest.raises(RegistryError, match=r"config\.json is missing"):
        reg.checkout("demo@production" if version.aliases else "demo:1")


def test_gc_lists_then_removes_only_unreferenced_artifacts(tmp_path, artifact):
    reg = Registry(tmp_path / "home")
    kept = Path(reg.register("demo", artifact).artifact_path)
    orphan = reg.artifacts_dir / ("0" * 64)
    orphan.mkdir()
    (orphan / "model.safetensors").write_bytes(b"x")
    conversion = reg.artifacts_dir / f"{kept.name}.ct2-int8-abc"
    conversion.mkdir()
    assert reg.gc() == [orphan]
    assert orphan.exists()  # a dry run by default
    assert reg.gc(apply=True) == [orphan]
    assert not orphan.exists() and kept.exists() and conversion.exists()
    assert reg.checkout("demo:1").version == 1
