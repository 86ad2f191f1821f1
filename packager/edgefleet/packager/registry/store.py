"""The model registry: SQLite metadata plus a content-addressed artifact folder.

Layout of a registry folder::

    registry.db        SQLite: meta, versions, aliases
    artifacts/ab/...   model files and reference arrays, named by SHA-256
    tmp/               partial writes (safe to delete when no command runs)

Invariants:

- a version row exists only if every artifact it names is complete on disk:
  artifacts are written (and fsynced) before the transaction that inserts the
  row commits, and a failed registration removes the artifacts it created;
- version numbers are per model name, start at 1 and are allocated inside a
  ``BEGIN IMMEDIATE`` transaction, so two concurrent registrations never get
  the same number;
- rows are never updated except ``retired_at``/``retired_reason``; aliases are
  a separate table and can only point at versions that are not retired;
- a folder is accepted as a registry only if its database carries our
  ``meta.format`` marker; anything else is refused rather than written into.
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.packager.errors import (
    DataFileError,
    NotARegistryError,
    RegistryEntryNotFoundError,
    RegistryStorageError,
    RetiredVersionError,
)
from edgefleet.packager.registry.artifacts import ArtifactStore, StoredArtifact
from edgefleet.packager.registry.records import (
    DatasetInfo,
    FeatureSpec,
    ModelVersion,
    ReferenceInfo,
)
from edgefleet.packager.registry.refs import ModelRef, check_alias, check_model_name

ENV_VAR = "EDGEFLEET_REGISTRY"
DEFAULT_PATH = Path(".edgefleet") / "registry"
DB_NAME = "registry.db"
FORMAT_MARKER = "edgefleet-registry"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE versions (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    created_at REAL NOT NULL,
    created_by TEXT NOT NULL,
    git_commit TEXT,
    kind TEXT NOT NULL,
    artifact_format TEXT NOT NULL,
    artifact_sha256 TEXT NOT NULL,
    artifact_size INTEGER NOT NULL,
    source_path TEXT NOT NULL,
    framework TEXT NOT NULL,
    framework_versions TEXT NOT NULL,
    estimator TEXT NOT NULL,
    task TEXT NOT NULL,
    labels TEXT,
    n_features INTEGER NOT NULL,
    features TEXT NOT NULL,
    metrics TEXT NOT NULL,
    params TEXT NOT NULL,
    tags TEXT NOT NULL,
    trained_at REAL,
    dataset TEXT,
    parent TEXT,
    reference TEXT,
    retired_at REAL,
    retired_reason TEXT,
    io_schema TEXT,
    PRIMARY KEY (name, version)
);
CREATE TABLE aliases (
    name TEXT NOT NULL,
    alias TEXT NOT NULL,
    version INTEGER NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (name, alias),
    FOREIGN KEY (name, version) REFERENCES versions (name, version)
);
"""


def resolve_registry_path(option: str | os.PathLike[str] | None) -> Path:
    """``--registry DIR``, else ``$EDGEFLEET_REGISTRY``, else ``./.edgefleet/registry``."""
    if option:
        return Path(option)
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else DEFAULT_PATH


@dataclass(frozen=True)
class NewVersion:
    """Everything a registration writes, prepared and validated beforehand (see intake)."""

    name: str
    kind: str
    artifact_format: str
    artifact: bytes
    source_path: str
    framework: str
    framework_versions: dict[str, str]
    estimator: str
    task: str
    labels: list[Any] | None
    features: tuple[FeatureSpec, ...]
    metrics: dict[str, float]
    params: dict[str, Any]
    tags: dict[str, Any]
    created_by: str
    trained_at: float | None = None
    dataset: DatasetInfo | None = None
    parent: ModelRef | None = None
    git_commit: str | None = None
    reference_x: bytes | None = None  # .npy bytes, float64 (rows, n_features)
    reference_y: bytes | None = None  # .npy bytes, (rows,)
    reference_rows: int = 0
    reference_source: str = ""
    io_schema: dict[str, Any] | None = None  # io schema v2 for non-table ONNX models
    notice: str | None = None  # one line for the user (e.g. "registered as raw")


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


class Registry:
    """One registry folder. Open with :meth:`open`; every method is one short transaction."""

    def __init__(self, root: Path, conn: sqlite3.Connection, registry_id: str) -> None:
        self.root = root
        self.registry_id = registry_id
        self.artifacts = ArtifactStore(root)
        self._conn = conn

    # -- opening -----------------------------------------------------------------

    @classmethod
    def open(cls, root: Path, *, create: bool = False) -> Registry:
        """Open the registry at ``root``; with ``create`` an absent or empty folder is initialised."""
        root = Path(root)
        db_path = root / DB_NAME
        if root.exists() and not root.is_dir():
            raise NotARegistryError(f"{root} is not a registry: it is a file, not a folder")
        fresh = not db_path.exists()
        if fresh:
            if root.is_dir() and any(root.iterdir()):
                raise NotARegistryError(
                    f"{root} is not a registry: the folder has files but no {DB_NAME}"
                )
            if not create:
                raise NotARegistryError(
                    f"no registry at {root} (register a model to create one, or pass --registry)"
                )
            try:
                root.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise RegistryStorageError(f"cannot create registry folder {root}: {e}") from e
        try:
            # isolation_level=None: we issue BEGIN ourselves so the version allocation
            # and the insert share one IMMEDIATE transaction.
            conn = sqlite3.connect(db_path, isolation_level=None, timeout=30.0)
            conn.execute("PRAGMA foreign_keys = ON")
            registry_id = cls._initialise(conn) if fresh else cls._check_marker(conn, root)
            _add_io_schema_column(conn)
        except sqlite3.DatabaseError as e:
            raise NotARegistryError(f"{root} is not a registry: {DB_NAME} unreadable ({e})") from e
        return cls(root, conn, registry_id)

    @staticmethod
    def _initialise(conn: sqlite3.Connection) -> str:
        registry_id = uuid.uuid4().hex
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Not executescript(): it would commit the open transaction first.
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [
                    ("format", FORMAT_MARKER),
                    ("schema_version", str(SCHEMA_VERSION)),
                    ("registry_id", registry_id),
                ],
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return registry_id

    @staticmethod
    def _check_marker(conn: sqlite3.Connection, root: Path) -> str:
        try:
            rows = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as e:
            raise NotARegistryError(f"{root} is not a registry: {DB_NAME} has no meta table") from e
        if rows.get("format") != FORMAT_MARKER:
            raise NotARegistryError(f"{root} is not a registry: {DB_NAME} is some other database")
        if int(rows.get("schema_version", "0")) > SCHEMA_VERSION:
            raise NotARegistryError(
                f"{root} was written by a newer edgefleet (schema {rows['schema_version']})"
            )
        return rows["registry_id"]

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise RegistryStorageError(f"registry database is busy or unwritable: {e}") from e
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        try:
            self._conn.execute("COMMIT")
        except sqlite3.Error as e:
            self._conn.execute("ROLLBACK")
            raise RegistryStorageError(f"cannot commit to the registry: {e}") from e

    # -- writing -----------------------------------------------------------------

    def register(self, new: NewVersion, *, now: float) -> ModelVersion:
        """Store ``new`` as the next version of its model and return it.

        All or nothing: on any failure no row exists and the artifacts this
        call created are removed again.
        """
        check_model_name(new.name)
        created: list[StoredArtifact] = []
        try:
            model = self._put(new.artifact, created)
            reference = None
            if new.reference_x is not None:
                x = self._put(new.reference_x, created)
                y = self._put(new.reference_y, created) if new.reference_y is not None else None
                reference = ReferenceInfo(
                    x_sha256=x.sha256,
                    y_sha256=y.sha256 if y else None,
                    rows=new.reference_rows,
                    columns=len(new.features),
                    source_path=new.reference_source,
                )
            with self._write() as conn:
                parent = None
                if new.parent is not None:
                    parent = self._resolve(conn, new.parent).ref
                row = conn.execute(
                    "SELECT COALESCE(MAX(version), 0) + 1 FROM versions WHERE name = ?",
                    (new.name,),
                ).fetchone()
                version = int(row[0])
                self._insert(conn, new, version, now, model, reference, parent)
        except BaseException:
            for artifact in created:
                self.artifacts.remove(artifact.sha256)
            raise
        return self.get(ModelRef(new.name, version=version))

    def _put(self, data: bytes, created: list[StoredArtifact]) -> StoredArtifact:
        stored = self.artifacts.put_bytes(data)
        if stored.created:
            created.append(stored)
        return stored

    def _insert(
        self,
        conn: sqlite3.Connection,
        new: NewVersion,
        version: int,
        now: float,
        model: StoredArtifact,
        reference: ReferenceInfo | None,
        parent: str | None,
    ) -> None:
        try:
            conn.execute(
                "INSERT INTO versions (name, version, created_at, created_by, git_commit, kind,"
                " artifact_format, artifact_sha256, artifact_size, source_path, framework,"
                " framework_versions, estimator, task, labels, n_features, features, metrics,"
                " params, tags, trained_at, dataset, parent, reference, io_schema)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    new.name,
                    version,
                    now,
                    new.created_by,
                    new.git_commit,
                    new.kind,
                    new.artifact_format,
                    model.sha256,
                    model.size,
                    new.source_path,
                    new.framework,
                    _dumps(new.framework_versions),
                    new.estimator,
                    new.task,
                    _dumps(new.labels) if new.labels is not None else None,
                    len(new.features),
                    _dumps([f.to_dict() for f in new.features]),
                    _dumps(new.metrics),
                    _dumps(new.params),
                    _dumps(new.tags),
                    new.trained_at,
                    _dumps(new.dataset.to_dict()) if new.dataset else None,
                    parent,
                    _dumps(reference.to_dict()) if reference else None,
                    _dumps(new.io_schema) if new.io_schema is not None else None,
                ),
            )
        except sqlite3.Error as e:
            raise RegistryStorageError(f"cannot record {new.name}:{version}: {e}") from e

    def set_alias(self, ref: ModelRef, alias: str, *, now: float) -> ModelVersion:
        """Point ``NAME@alias`` at the version ``ref`` names (moving it if it exists)."""
        check_alias(alias)
        with self._write() as conn:
            target = self._resolve(conn, ref)
            if target.retired:
                raise RetiredVersionError(f"{target.ref} is retired; an alias cannot point at it")
            conn.execute(
                "INSERT INTO aliases (name, alias, version, updated_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (name, alias) DO UPDATE SET version = excluded.version,"
                " updated_at = excluded.updated_at",
                (target.name, alias, target.version, now),
            )
        return self.get(ModelRef(target.name, version=target.version))

    def retire(self, ref: ModelRef, *, reason: str | None, now: float) -> ModelVersion:
        """Mark a version retired (idempotent: retiring twice keeps the first date)."""
        with self._write() as conn:
            target = self._resolve(conn, ref, allow_retired=True)
            if not target.retired:
                conn.execute(
                    "UPDATE versions SET retired_at = ?, retired_reason = ?"
                    " WHERE name = ? AND version = ?",
                    (now, reason, target.name, target.version),
                )
        return self.get(ModelRef(target.name, version=target.version))

    # -- reading -----------------------------------------------------------------

    def get(self, ref: ModelRef, *, allow_retired: bool = True) -> ModelVersion:
        """The version ``ref`` names; ``NAME`` alone means the newest non-retired one."""
        return self._resolve(self._conn, ref, allow_retired=allow_retired)

    def _resolve(
        self, conn: sqlite3.Connection, ref: ModelRef, *, allow_retired: bool = True
    ) -> ModelVersion:
        if ref.alias is not None:
            row = conn.execute(
                "SELECT version FROM aliases WHERE name = ? AND alias = ?", (ref.name, ref.alias)
            ).fetchone()
            if row is None:
                self._require_model(conn, ref.name)
                raise RegistryEntryNotFoundError(f"model {ref.name!r} has no alias {ref.alias!r}")
            version = int(row[0])
        elif ref.version is not None:
            version = ref.version
        else:
            row = conn.execute(
                "SELECT MAX(version) FROM versions WHERE name = ? AND retired_at IS NULL",
                (ref.name,),
            ).fetchone()
            if row[0] is None:
                self._require_model(conn, ref.name)
                raise RetiredVersionError(f"every version of {ref.name!r} is retired")
            version = int(row[0])
        found = self._select(conn, "WHERE v.name = ? AND v.version = ?", (ref.name, version))
        if not found:
            self._require_model(conn, ref.name)
            raise RegistryEntryNotFoundError(f"model {ref.name!r} has no version {version}")
        mv = found[0]
        if mv.retired and not allow_retired:
            raise RetiredVersionError(f"{mv.ref} is retired and cannot be used")
        return mv

    def _require_model(self, conn: sqlite3.Connection, name: str) -> None:
        if conn.execute("SELECT 1 FROM versions WHERE name = ?", (name,)).fetchone() is None:
            raise RegistryEntryNotFoundError(f"no model named {name!r} in {self.root}")

    def versions(self, name: str | None = None) -> list[ModelVersion]:
        """Every version (of one model, if ``name``), ordered by name then version."""
        if name is None:
            return self._select(self._conn, "", ())
        rows = self._select(self._conn, "WHERE v.name = ?", (name,))
        if not rows:
            self._require_model(self._conn, name)
        return rows

    def read_model(self, mv: ModelVersion) -> bytes:
        """The registered model file's bytes (hash-checked)."""
        return self.artifacts.read_bytes(mv.artifact_sha256)

    def read_reference(self, mv: ModelVersion) -> tuple[np.ndarray, np.ndarray | None]:
        """The reference features ``(rows, n_features)`` and labels (or ``None``)."""
        if mv.reference is None:
            raise DataFileError(
                f"{mv.ref} has no reference data; register it again with --reference-data"
            )
        x = _load_npy(self.artifacts.read_bytes(mv.reference.x_sha256))
        y = None
        if mv.reference.y_sha256 is not None:
            y = _load_npy(self.artifacts.read_bytes(mv.reference.y_sha256))
        return x, y

    def read_tensor_reference(self, mv: ModelVersion) -> dict[str, np.ndarray]:
        """The reference samples of a tensor model: one array per input name."""
        if mv.reference is None:
            raise DataFileError(
                f"{mv.ref} has no reference data; register it again with --reference-data"
            )
        data = self.artifacts.read_bytes(mv.reference.x_sha256)
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return {name: z[name] for name in z.files}

    def read_tensor_labels(self, mv: ModelVersion) -> np.ndarray | None:
        """The labels registered with a tensor model's reference samples (or ``None``)."""
        if mv.reference is None or mv.reference.y_sha256 is None:
            return None
        return _load_npy(self.artifacts.read_bytes(mv.reference.y_sha256))

    def lineage(self, ref: ModelRef) -> list[ModelVersion]:
        """``ref`` followed by its parent, grandparent, ... (oldest last)."""
        chain = [self.get(ref)]
        seen = {chain[0].ref}
        while chain[-1].parent is not None:
            parent_name, _, parent_version = chain[-1].parent.rpartition(":")
            parent = self.get(ModelRef(parent_name, version=int(parent_version)))
            if parent.ref in seen:  # impossible through register(); guards hand-edited databases
                break
            seen.add(parent.ref)
            chain.append(parent)
        return chain

    def _select(
        self, conn: sqlite3.Connection, where: str, args: tuple[Any, ...]
    ) -> list[ModelVersion]:
        try:
            rows = conn.execute(
                "SELECT v.*, (SELECT GROUP_CONCAT(a.alias, ',') FROM aliases a"
                " WHERE a.name = v.name AND a.version = v.version) AS alias_list"
                f" FROM versions v {where} ORDER BY v.name, v.version",
                args,
            )
            names = [d[0] for d in rows.description]
            return [_row_to_version(dict(zip(names, row, strict=True))) for row in rows]
        except sqlite3.Error as e:
            raise RegistryStorageError(f"cannot read the registry: {e}") from e


def _add_io_schema_column(conn: sqlite3.Connection) -> None:
    """Registries made before io schema v2 gain the nullable column (older readers ignore it)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(versions)")}
    if "io_schema" not in columns:
        conn.execute("ALTER TABLE versions ADD COLUMN io_schema TEXT")


def _load_npy(data: bytes) -> np.ndarray:
    # allow_pickle=False: reference arrays are plain numbers or fixed-width strings.
    return np.load(io.BytesIO(data), allow_pickle=False)


def _row_to_version(row: dict[str, Any]) -> ModelVersion:
    def load(key: str) -> Any:
        value = row[key]
        return json.loads(value) if value is not None else None

    dataset = load("dataset")
    reference = load("reference")
    aliases = tuple(sorted(row["alias_list"].split(","))) if row["alias_list"] else ()
    return ModelVersion(
        name=row["name"],
        version=row["version"],
        created_at=row["created_at"],
        created_by=row["created_by"],
        git_commit=row["git_commit"],
        kind=row["kind"],
        artifact_format=row["artifact_format"],
        artifact_sha256=row["artifact_sha256"],
        artifact_size=row["artifact_size"],
        source_path=row["source_path"],
        framework=row["framework"],
        framework_versions=load("framework_versions"),
        estimator=row["estimator"],
        task=row["task"],
        labels=load("labels"),
        n_features=row["n_features"],
        features=tuple(FeatureSpec.from_dict(f) for f in load("features")),
        metrics=load("metrics"),
        params=load("params"),
        tags=load("tags"),
        trained_at=row["trained_at"],
        dataset=DatasetInfo.from_dict(dataset) if dataset else None,
        parent=row["parent"],
        reference=ReferenceInfo.from_dict(reference) if reference else None,
        retired_at=row["retired_at"],
        retired_reason=row["retired_reason"],
        aliases=aliases,
        io_schema=load("io_schema") if "io_schema" in row else None,
    )
