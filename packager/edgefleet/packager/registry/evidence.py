"""Field evidence files (``edgefleet hub evidence MODEL:V --json``) beside registry metrics.

The hub exports; the packager only reads the JSON file (it never opens the
hub's store). A file is trusted no more than any other input: it must be an
object of ``kind`` ``edgefleet.field_evidence`` and ``version`` 1, name the
model and version it is about, and every figure must be a finite number, a
bool where the field is one, or null. A file for neither compared version is
refused, and so are two files for the same version.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgefleet.packager.errors import DataFileError

EVIDENCE_KIND = "edgefleet.field_evidence"
NUMBER_FIELDS = (
    "devices",
    "inferences",
    "errors",
    "error_rate",
    "latency_p50_ms",
    "latency_p95_ms",
    "accuracy",
    "labels",
    "validation_accuracy",
    "drift_share",
)
BOOL_FIELDS = ("dataset_drift",)
MAX_BYTES = 1 << 20


def _number(value: Any, key: str, path: Path) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DataFileError(f"{path}: {key} must be a finite number or null, got {value!r:.40}")
    return value


def read_evidence(path: Path) -> dict[str, Any]:
    """One checked evidence document (``ref`` is ``model:version``)."""
    try:
        if path.stat().st_size > MAX_BYTES:
            raise DataFileError(f"{path}: an evidence file is at most {MAX_BYTES} bytes")
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataFileError(f"cannot read evidence {path}: {e}") from e
    if not isinstance(doc, dict) or doc.get("kind") != EVIDENCE_KIND or doc.get("version") != 1:
        raise DataFileError(
            f"{path} is not field evidence (expected kind {EVIDENCE_KIND} version 1, "
            "from edgefleet hub evidence MODEL:V --json)"
        )
    model, version = doc.get("model"), doc.get("model_version")
    if not isinstance(model, str) or isinstance(version, bool) or not isinstance(version, int):
        raise DataFileError(f"{path}: evidence must name its model and integer model_version")
    out: dict[str, Any] = {"ref": f"{model}:{version}", "source": str(path)}
    for key in NUMBER_FIELDS:
        out[key] = _number(doc.get(key), key, path)
    for key in BOOL_FIELDS:
        value = doc.get(key)
        if value is not None and not isinstance(value, bool):
            raise DataFileError(f"{path}: {key} must be true, false or null")
        out[key] = value
    return out


def evidence_rows(refs: tuple[str, str], paths: Sequence[Path]) -> list[dict[str, Any]]:
    """Rows ``{key, a, b, delta}`` of the evidence for the two compared versions."""
    by_ref: dict[str, dict[str, Any]] = {}
    for path in paths:
        doc = read_evidence(path)
        if doc["ref"] not in refs:
            raise DataFileError(
                f"{path} is evidence for {doc['ref']}, not for {refs[0]} or {refs[1]}"
            )
        if doc["ref"] in by_ref:
            raise DataFileError(f"two evidence files for {doc['ref']}")
        by_ref[doc["ref"]] = doc
    a, b = by_ref.get(refs[0], {}), by_ref.get(refs[1], {})
    rows = []
    for key in (*NUMBER_FIELDS, *BOOL_FIELDS):
        va, vb = a.get(key), b.get(key)
        delta = None
        if key in NUMBER_FIELDS and va is not None and vb is not None:
            delta = float(vb) - float(va)
        rows.append({"key": key, "a": va, "b": vb, "changed": va != vb, "delta": delta})
    return rows
