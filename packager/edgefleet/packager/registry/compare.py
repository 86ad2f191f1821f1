"""Side-by-side comparison of two registered versions (pure).

Metrics get a delta (``b - a``) when both sides are numbers; params, tags and
metadata are marked ``changed`` when they differ. Keys present on one side
only appear with ``None`` on the other, so nothing silently drops out.
"""

from __future__ import annotations

from typing import Any, TypeGuard

from edgefleet.packager.registry.records import ModelVersion, iso_utc


def _is_number(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _metadata(mv: ModelVersion) -> dict[str, Any]:
    return {
        "status": mv.status,
        "estimator": mv.estimator,
        "framework": mv.framework,
        "framework_versions": ", ".join(
            f"{k} {v}" for k, v in sorted(mv.framework_versions.items())
        ),
        "task": mv.task,
        "n_features": mv.n_features,
        "labels": mv.labels,
        "artifact_sha256": mv.artifact_sha256,
        "artifact_size": mv.artifact_size,
        "created_at": iso_utc(mv.created_at),
        "created_by": mv.created_by,
        "git_commit": mv.git_commit,
        "trained_at": iso_utc(mv.trained_at),
        "parent": mv.parent,
        "dataset_sha256": mv.dataset.sha256 if mv.dataset else None,
        "dataset_rows": mv.dataset.rows if mv.dataset else None,
        "reference_rows": mv.reference.rows if mv.reference else None,
        "aliases": ", ".join(mv.aliases) or None,
    }


def _rows(a: dict[str, Any], b: dict[str, Any], *, deltas: bool) -> list[dict[str, Any]]:
    rows = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        row: dict[str, Any] = {"key": key, "a": va, "b": vb, "changed": va != vb}
        if deltas:
            row["delta"] = vb - va if _is_number(va) and _is_number(vb) else None
        rows.append(row)
    return rows


def compare_versions(a: ModelVersion, b: ModelVersion) -> dict[str, Any]:
    """``{"a": ref, "b": ref, "metrics": [...], "params": [...], "tags": [...], "metadata": [...]}``."""
    return {
        "a": a.ref,
        "b": b.ref,
        "metrics": _rows(a.metrics, b.metrics, deltas=True),
        "params": _rows(a.params, b.params, deltas=False),
        "tags": _rows(a.tags, b.tags, deltas=False),
        "metadata": _rows(_metadata(a), _metadata(b), deltas=True),
    }
