"""The registry store: model versions with lineage, aliases, and an append-only alias log.

SQLite in WAL mode under `KOLLM_HOME` (default `.kollm/`). A version number is taken inside a
`BEGIN IMMEDIATE` transaction, so registrations from several processes never collide. A
version is immutable: its files are copied into the content-addressed store
(`KOLLM_HOME/artifacts/`) when it is registered, and `checkout` verifies them before a load.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kollm import __version__
from kollm.artifacts import (
    ArtifactError,
    file_hashes,
    store_artifact,
    verify_artifact,
    weights_sha256,
)
from kollm.registry.bases import base_mismatch, base_record
from kollm.remote import remote_record
from kollm.store import connect, default_home, open_store

_REF_RE = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?:(?::(?P<version>\d+))|(?:@(?P<alias>[\w.-]+)))?$"
)


class RegistryError(ValueError):
    """An unknown model, version or alias, or a move the registry cannot make."""


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_name(value: str, what: str = "model name") -> str:
    """`value` if it is a valid model name or alias (a letter or digit, then letters, digits,
    `.`, `_`, `-`: what `NAME@ALIAS` can name); RegistryError naming it otherwise."""
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise RegistryError(
            f"invalid {what} {value!r}: use letters, digits, '.', '_' and '-',"
            " starting with a letter or digit"
        )
    return value


__all__ = [
    "ArtifactError",
    "ModelVersion",
    "Registry",
    "RegistryError",
    "connect",
    "default_home",
    "weights_sha256",
]


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    artifact_path: str
    weights_sha256: str
    base_model: str | None
    method: str | None
    data_manifest: str | None
    recipe_text: str | None
    recipe_sha256: str | None
    metrics: dict[str, Any]
    kollm_version: str
    created_at: str
    parent_version: int | None
    files: dict[str, str] | None = None
    prompt_format: str | None = None
    lineage: dict[str, Any] | None = None
    aliases: list[str] = field(default_factory=list)

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def format(self):
        """The PromptFormat the version was trained with, or None (registered without one)."""
        from kollm.prompts import PromptFormat

        return PromptFormat.from_json(self.prompt_format)


class Registry:
    def __init__(self, home: Path | str | None = None) -> None:
        self.home, self.path = open_store(home)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = connect(self.path)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            yield conn
        finally:
            conn.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that holds the lock from its start (no lost updates)."""
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    # --- versions ----------------------------------------------------------------------------

    def register(
        self,
        name: str,
        artifact: Path | str,
        *,
        base_model: str | None = None,
        method: str | None = None,
        data_manifest: str | None = None,
        recipe_text: str | None = None,
        metrics: dict[str, Any] | None = None,
        parent_version: int | None = None,
        prompt_format: str | None = None,
        lineage: dict[str, Any] | None = None,
    ) -> ModelVersion:
        """Add the next version of `name`: its files are hashed and stored content-addressed,
        and the version points at the stored copy, never at the run dir."""
        from kollm.prompts import load_format

        check_name(name)
        artifact = Path(artifact).resolve()
        try:
            sha = weights_sha256(artifact)
        except ArtifactError as err:
            raise RegistryError(str(err)) from err
        hashes = file_hashes(artifact)
        try:
            stored = store_artifact(artifact, self.artifacts_dir, hashes)
        except OSError as err:  # a full disk: nothing was stored (the staged copy is removed)
            raise RegistryError(f"storing {artifact} in {self.artifacts_dir}: {err}") from err
        if prompt_format is None and artifact.is_dir():
            fmt = load_format(artifact)
            prompt_format = fmt.to_json() if fmt else None
        recipe_sha = hashlib.sha256(recipe_text.encode()).hexdigest() if recipe_text else None
        lineage = self._with_base(artifact, base_model, lineage)
        remote = remote_record(artifact) if artifact.is_dir() else None
        if remote:  # `registry show` says so; serve and export ask for --trust-remote-code
            lineage = {**(lineage or {}), "remote_code": remote}
        with self._write() as conn:
            row = conn.execute(
                "SELECT COALESCE(MAX(version), 0) + 1 FROM model_versions WHERE name = ?", (name,)
            ).fetchone()
            version = int(row[0])
            conn.execute(
                "INSERT INTO model_versions VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    name,
                    version,
                    stored.relative_to(self.home).as_posix(),  # found from any working dir
                    sha,
                    base_model,
                    method,
                    data_manifest,
                    recipe_text,
                    recipe_sha,
                    json.dumps(metrics or {}),
                    __version__,
                    _now(),
                    parent_version,
                    json.dumps(hashes),
                    prompt_format,
                    json.dumps(lineage, ensure_ascii=False) if lineage else None,
                ),
            )
        return self.get(f"{name}:{version}")

    def _with_base(
        self, artifact: Path, base_model: str | None, lineage: dict[str, Any] | None
    ) -> dict[str, Any] | None:
        """`lineage` with, for an adapter, the base it was trained on (see registry.bases)."""
        if lineage and "base" in lineage:
            return lineage
        record = base_record(artifact, self._base_ref(base_model))
        return {**(lineage or {}), "base": record} if record else lineage

    def _base_ref(self, base_model: str | None) -> str | None:
        """NAME:VERSION of `base_model` when it names a registered version (not a dir)."""
        if not base_model or Path(base_model).exists() or not _REF_RE.match(base_model):
            return None
        try:
            return self.get(base_model).ref
        except RegistryError:
            return None

    @property
    def artifacts_dir(self) -> Path:
        path = self.home / "artifacts"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def checkout(self, ref: str) -> ModelVersion:
        """The version `ref` names, after checking its stored files against their sha256 and,
        for an adapter, its base's weights against those it was trained on."""
        version = self.get(ref)
        path = Path(version.artifact_path)
        try:
            if version.files is not None:
                verify_artifact(path, version.files, version.ref)
            elif weights_sha256(path) != version.weights_sha256:
                raise ArtifactError(
                    f"{version.ref}: the weights in {path} changed after registration"
                )
        except ArtifactError as err:
            raise RegistryError(str(err)) from err
        base = (version.lineage or {}).get("base")
        problem = base_mismatch(version.ref, path, base) if base else None
        if problem:
            raise RegistryError(problem)
        return version

    def gc(self, apply: bool = False) -> list[Path]:
        """Stored artifacts (and their engine conversions) no version points at; removed only
        with `apply`."""
        used = {Path(v.artifact_path).name for v in self.list()}
        unused = [
            p for p in sorted(self.artifacts_dir.iterdir()) if p.name.split(".ct2-")[0] not in used
        ]
        if apply:
            for path in unused:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        return unused

    def _row_to_version(self, conn: sqlite3.Connection, row: sqlite3.Row) -> ModelVersion:
        aliases = [
            r[0]
            for r in conn.execute(
                "SELECT alias FROM aliases WHERE name = ? AND version = ? ORDER BY alias",
                (row["name"], row["version"]),
            )
        ]
        data = dict(row)
        data["artifact_path"] = self._artifact_path(data["artifact_path"])
        data["metrics"] = json.loads(data["metrics"])
        data["files"] = json.loads(data["files"]) if data.get("files") else None
        data["lineage"] = json.loads(data["lineage"]) if data.get("lineage") else None
        return ModelVersion(**data, aliases=aliases)

    def _artifact_path(self, stored: str) -> str:
        """The absolute path of a version's files. A stored artifact is recorded relative to
        KOLLM_HOME (`artifacts/<key>`); an absolute one that is gone (a home moved or mounted
        elsewhere) is found by its key under this home. A run dir registered before versions
        were stored stays as it was registered."""
        path = Path(stored)
        if path.parent.name != "artifacts":
            return stored
        here = (self.home / "artifacts" / path.name).absolute()
        if not path.is_absolute() or (not path.exists() and here.exists()):
            return str(here)
        return stored

    def resolve(self, ref: str) -> tuple[str, int]:
        """`NAME`, `NAME:VERSION` or `NAME@ALIAS` -> (name, version). NAME alone is the latest."""
        match = _REF_RE.match(ref)
        if not match:
            raise RegistryError(
                f"invalid model reference {ref!r}; use NAME, NAME:VERSION or NAME@ALIAS"
            )
        name, version, alias = match["name"], match["version"], match["alias"]
        with self._connect() as conn:
            if alias:
                row = conn.execute(
                    "SELECT version FROM aliases WHERE name = ? AND alias = ?", (name, alias)
                ).fetchone()
                if row is None:
                    raise RegistryError(f"{name} has no alias '{alias}'")
                return name, int(row[0])
            if version:
                return name, int(version)
            row = conn.execute(
                "SELECT MAX(version) FROM model_versions WHERE name = ?", (name,)
            ).fetchone()
            if row[0] is None:
                raise RegistryError(f"no model named '{name}'")
            return name, int(row[0])

    def get(self, ref: str) -> ModelVersion:
        name, version = self.resolve(ref)
        with self._connect() as conn:
            row = conn.execute(
                "SELECT * FROM model_versions WHERE name = ? AND version = ?", (name, version)
            ).fetchone()
            if row is None:
                raise RegistryError(f"no version {version} of '{name}'")
            return self._row_to_version(conn, row)

    def add_evaluation(self, ref: str, kind: str, metrics: dict[str, Any]) -> None:
        """Record a measurement of a registered version (`kind`: `lm-eval`, `judge` ...)."""
        name, version = self.resolve(ref)
        self.get(f"{name}:{version}")  # it exists
        with self._write() as conn:
            conn.execute(
                "INSERT INTO evaluations (name, version, kind, metrics, created_at)"
                " VALUES (?,?,?,?,?)",
                (name, version, kind, json.dumps(metrics, ensure_ascii=False), _now()),
            )

    def evaluations(self, ref: str) -> list[dict[str, Any]]:
        """The measurements recorded for a version, oldest first."""
        name, version = self.resolve(ref)
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT kind, metrics, created_at FROM evaluations WHERE name = ? AND version = ?"
                " ORDER BY id",
                (name, version),
            ).fetchall()
        return [{**dict(r), "metrics": json.loads(r["metrics"])} for r in rows]

    def add_export(
        self, ref: str, fmt: str, path: Path | str, sha256: str, size_bytes: int, **detail: Any
    ) -> None:
        """Record an export of a registered version (its file or dir, sha256 and size)."""
        name, version = self.resolve(ref)
        quant = detail.pop("quant", None)
        with self._write() as conn:
            conn.execute(
                "INSERT INTO exports (name, version, format, quant, path, sha256, size_bytes,"
                " detail, created_at) VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    name,
                    version,
                    fmt,
                    quant,
                    str(path),
                    sha256,
                    size_bytes,
                    json.dumps(detail, ensure_ascii=False, default=str),
                    _now(),
                ),
            )

    def exports(self, ref: str) -> list[dict[str, Any]]:
        """The exports recorded for a version, oldest first."""
        name, version = self.resolve(ref)
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT format, quant, path, sha256, size_bytes, detail, created_at FROM exports"
                " WHERE name = ? AND version = ? ORDER BY id",
                (name, version),
            ).fetchall()
        return [{**dict(r), "detail": json.loads(r["detail"])} for r in rows]

    def set_export_quality(self, ref: str, sha256: str, quality: dict[str, Any]) -> bool:
        """Store what a conversion costs (`kollm.engines.quality`) with the latest export of
        the version whose sha256 is `sha256`; False when none is recorded."""
        name, version = self.resolve(ref)
        with self._write() as conn:
            row = conn.execute(
                "SELECT id, detail FROM exports WHERE name = ? AND version = ? AND sha256 = ?"
                " ORDER BY id DESC LIMIT 1",
                (name, version, sha256),
            ).fetchone()
            if row is None:
                return False
            detail = {**json.loads(row["detail"]), "quality": quality}
            conn.execute(
                "UPDATE exports SET detail = ? WHERE id = ?",
                (json.dumps(detail, ensure_ascii=False, default=str), row["id"]),
            )
        return True

    def export_quality(self, ref: str, sha256: str) -> dict[str, Any] | None:
        """The figures stored with the latest export whose sha256 is `sha256`, or None."""
        rows = [r for r in self.exports(ref) if r["sha256"] == sha256]
        return rows[-1]["detail"].get("quality") if rows else None

    def list(self, name: str | None = None) -> list[ModelVersion]:
        with self._connect() as conn:
            query = "SELECT * FROM model_versions"
            rows = conn.execute(
                query + (" WHERE name = ?" if name else "") + " ORDER BY name, version",
                (name,) if name else (),
            ).fetchall()
            return [self._row_to_version(conn, row) for row in rows]

    # --- aliases -----------------------------------------------------------------------------

    def promote(self, name: str, version: int, alias: str = "production") -> ModelVersion:
        """Point `alias` at `name:version`; the move is logged."""
        check_name(name)
        check_name(alias, "alias")
        with self._write() as conn:
            exists = conn.execute(
                "SELECT 1 FROM model_versions WHERE name = ? AND version = ?", (name, version)
            ).fetchone()
            if not exists:
                raise RegistryError(f"no version {version} of '{name}'")
            self._move(conn, name, alias, version, "promote")
        return self.get(f"{name}:{version}")

    def rollback(self, name: str, alias: str = "production") -> ModelVersion:
        """Return `alias` to the version it pointed at before its latest promotion."""
        check_name(name)
        check_name(alias, "alias")
        with self._write() as conn:
            current = conn.execute(
                "SELECT version FROM aliases WHERE name = ? AND alias = ?", (name, alias)
            ).fetchone()
            if current is None:
                raise RegistryError(f"{name} has no alias '{alias}'")
            # Walk back the promotions: the holder before the current one's last promotion.
            row = conn.execute(
                "SELECT from_version FROM alias_log WHERE name = ? AND alias = ? AND to_version = ?"
                " AND action = 'promote' ORDER BY id DESC LIMIT 1",
                (name, alias, current[0]),
            ).fetchone()
            if row is None or row[0] is None:
                raise RegistryError(f"{name}@{alias} has no earlier version to roll back to")
            self._move(conn, name, alias, int(row[0]), "rollback")
            target = int(row[0])
        return self.get(f"{name}:{target}")

    def _move(
        self, conn: sqlite3.Connection, name: str, alias: str, version: int, action: str
    ) -> None:
        previous = conn.execute(
            "SELECT version FROM aliases WHERE name = ? AND alias = ?", (name, alias)
        ).fetchone()
        conn.execute(
            "INSERT INTO aliases VALUES (?,?,?,?) ON CONFLICT (name, alias) DO UPDATE"
            " SET version = excluded.version, updated_at = excluded.updated_at",
            (name, alias, version, _now()),
        )
        conn.execute(
            "INSERT INTO alias_log (name, alias, from_version, to_version, action, at)"
            " VALUES (?,?,?,?,?,?)",
            (name, alias, previous[0] if previous else None, version, action, _now()),
        )

    def alias_log(self, name: str) -> list[dict[str, Any]]:
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT * FROM alias_log WHERE name = ? ORDER BY id", (name,)
            ).fetchall()
            return [dict(row) for row in rows]
