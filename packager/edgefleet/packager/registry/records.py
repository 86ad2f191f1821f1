"""What the registry knows about one model version, as a frozen value.

A :class:`ModelVersion` is read from the registry database and never changes
once written, except for ``retired_at``/``retired_reason`` (retiring) and the
alias list (aliases point at versions, versions do not own them). Times are
epoch seconds; :meth:`ModelVersion.to_dict` renders them as ISO-8601 UTC.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from edgefleet.core.io_schema import TASKS as SCHEMA_TASKS

# Tables (scikit-learn and table-shaped ONNX) keep their task names; any other ONNX
# model carries a declared io schema v2 task (``io_schema`` is then set).
TABLE_TASKS = ("classification", "regression")
TASKS = TABLE_TASKS + SCHEMA_TASKS
KINDS = ("sklearn", "onnx")
ARTIFACT_FORMATS = ("pickle", "joblib", "onnx")


def iso_utc(epoch_s: float | None) -> str | None:
    """``1700000000.0`` -> ``"2023-11-14T22:13:20Z"``; ``None`` stays ``None``."""
    if epoch_s is None:
        return None
    moment = dt.datetime.fromtimestamp(epoch_s, tz=dt.UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class DatasetInfo:
    """The training data a version was built from (by reference: the data is not stored)."""

    path: str
    sha256: str
    rows: int | None = None
    columns: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "sha256": self.sha256,
            "rows": self.rows,
            "columns": self.columns,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DatasetInfo:
        return cls(path=d["path"], sha256=d["sha256"], rows=d.get("rows"), columns=d.get("columns"))


@dataclass(frozen=True)
class ReferenceInfo:
    """Held-out reference data stored in the registry (features, optional labels)."""

    x_sha256: str
    rows: int
    columns: int
    source_path: str
    y_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "x_sha256": self.x_sha256,
            "y_sha256": self.y_sha256,
            "rows": self.rows,
            "columns": self.columns,
            "source_path": self.source_path,
            "has_labels": self.y_sha256 is not None,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReferenceInfo:
        return cls(
            x_sha256=d["x_sha256"],
            rows=int(d["rows"]),
            columns=int(d["columns"]),
            source_path=d["source_path"],
            y_sha256=d.get("y_sha256"),
        )


@dataclass(frozen=True)
class FeatureSpec:
    """One input column: numeric, or categorical with its integer-coded levels."""

    name: str
    kind: str = "numeric"
    levels: tuple[float | int, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("numeric", "categorical"):
            raise ValueError(f"feature kind must be numeric or categorical, got {self.kind!r}")
        if self.kind == "categorical" and not self.levels:
            raise ValueError(f"categorical feature {self.name!r} needs its levels")

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.levels is not None:
            d["levels"] = list(self.levels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureSpec:
        levels = d.get("levels")
        return cls(d["name"], d.get("kind", "numeric"), tuple(levels) if levels else None)


@dataclass(frozen=True)
class ModelVersion:
    """One registered version of a model."""

    name: str
    version: int
    created_at: float
    created_by: str
    kind: str
    artifact_format: str
    artifact_sha256: str
    artifact_size: int
    source_path: str
    framework: str
    framework_versions: dict[str, str]
    estimator: str
    task: str
    labels: list[Any] | None
    n_features: int
    features: tuple[FeatureSpec, ...]
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, Any] = field(default_factory=dict)
    trained_at: float | None = None
    dataset: DatasetInfo | None = None
    parent: str | None = None
    reference: ReferenceInfo | None = None
    git_commit: str | None = None
    retired_at: float | None = None
    retired_reason: str | None = None
    aliases: tuple[str, ...] = ()
    io_schema: dict[str, Any] | None = None  # io schema v2 (non-table ONNX models only)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.artifact_format not in ARTIFACT_FORMATS:
            raise ValueError(f"artifact format must be one of {ARTIFACT_FORMATS}")
        if len(self.features) != self.n_features:
            raise ValueError("one feature spec per input column")

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def retired(self) -> bool:
        return self.retired_at is not None

    @property
    def status(self) -> str:
        return "retired" if self.retired else "active"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view used by ``--json`` output and the bundle lineage."""
        return {
            "name": self.name,
            "version": self.version,
            "ref": self.ref,
            "status": self.status,
            "created_at": iso_utc(self.created_at),
            "created_by": self.created_by,
            "git_commit": self.git_commit,
            "kind": self.kind,
            "artifact": {
                "format": self.artifact_format,
                "sha256": self.artifact_sha256,
                "size": self.artifact_size,
                "source_path": self.source_path,
            },
            "framework": self.framework,
            "framework_versions": dict(self.framework_versions),
            "estimator": self.estimator,
            "task": self.task,
            "labels": self.labels,
            "n_features": self.n_features,
            "features": [f.to_dict() for f in self.features],
            "metrics": dict(self.metrics),
            "params": dict(self.params),
            "tags": dict(self.tags),
            "trained_at": iso_utc(self.trained_at),
            "dataset": self.dataset.to_dict() if self.dataset else None,
            "parent": self.parent,
            "reference": self.reference.to_dict() if self.reference else None,
            "retired_at": iso_utc(self.retired_at),
            "retired_reason": self.retired_reason,
            "aliases": list(self.aliases),
            "io_schema": self.io_schema,
        }

    @property
    def is_tensor(self) -> bool:
        """Packed as io schema v2 (format 2 bundle) rather than as a table."""
        return self.io_schema is not None
