"""Window accounting: the in-memory accumulator and the record body it becomes.

A window body follows the telemetry record bodies of docs/protocol.md::

    {model, version, start_s, end_s, requests, errors: {kind: n}, schema_violations,
     latency_ms: {edges, counts}, predictions: {label: n},
     drift: base64(WindowStats.to_bytes()) | null, confusion: ConfusionCounts.to_dict() | null,
     merged: n}

``merged`` (an addition) says how many base windows a coarsened record holds.

Invariants:

- ``requests`` counts every request for the model version, successful or not;
  ``errors`` counts the failed ones by kind, so ``sum(errors) <= requests``;
  ``schema_violations`` counts the failed ones whose kind is a schema kind.
- Latency buckets follow the protocol: ``counts`` has ``len(edges) + 1``
  entries, bucket ``i`` holds latencies ``<= edges[i]`` and ``> edges[i-1]``.
- :func:`merge_bodies` is exact: every count adds, drift statistics merge by
  the drift module's exact merge, confusion counts add; the merged span runs
  from the first start to the last end. It never mixes model versions.

Pure: no I/O, no clock. Drift and confusion objects are handled through the
small :class:`StatsCodec` so this module does not care which drift version
produced the bytes.
"""

from __future__ import annotations

import base64
from bisect import bisect_left
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from edgefleet.agent.errors import TelemetryBufferError

#: Rows queued per model version before they are folded into the drift statistics.
#: A fold has a fixed cost of about a 256-row batch's third; its temporaries grow
#: with the rows (about 2.5 KB per 64-feature row). 128 rows keep both small.
FOLD_ROWS = 128
#: A big batch is folded in slices of this many rows, so its temporaries stay bounded.
FOLD_CHUNK_ROWS = 512

#: Upper bucket edges in milliseconds (the last bucket holds everything slower).
LATENCY_EDGES_MS: tuple[float, ...] = (
    0.25,
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
    20.0,
    50.0,
    100.0,
    200.0,
    500.0,
    1000.0,
    2000.0,
    5000.0,
    10000.0,
)


class StatsCodec(Protocol):
    """How drift window statistics and confusion counts are decoded, merged and encoded."""

    def merge_drift(self, a: bytes, b: bytes) -> bytes: ...

    def merge_confusion(self, a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]: ...

    def decode_drift(self, data: bytes) -> Any: ...

    def decode_confusion(self, data: Mapping[str, Any]) -> Any: ...


class DriftCodec:
    """The real codec: :mod:`edgefleet.core.drift` (imported on first use)."""

    def merge_drift(self, a: bytes, b: bytes) -> bytes:
        from edgefleet.core.drift import WindowStats

        return bytes(WindowStats.from_bytes(a).merge(WindowStats.from_bytes(b)).to_bytes())

    def merge_confusion(self, a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
        from edgefleet.core.drift import ConfusionCounts

        merged = ConfusionCounts.from_dict(dict(a)).merge(ConfusionCounts.from_dict(dict(b)))
        return dict(merged.to_dict())

    def decode_drift(self, data: bytes) -> Any:
        from edgefleet.core.drift import WindowStats

        return WindowStats.from_bytes(data)

    def decode_confusion(self, data: Mapping[str, Any]) -> Any:
        from edgefleet.core.drift import ConfusionCounts

        return ConfusionCounts.from_dict(dict(data))


def latency_bucket(latency_ms: float) -> int:
    """Index of the bucket holding ``latency_ms`` (see the module invariants)."""
    return bisect_left(LATENCY_EDGES_MS, latency_ms)


def label_key(value: Any) -> str:
    """JSON object keys are strings: ``3`` -> ``"3"``, ``np.int64(3)`` -> ``"3"``."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@dataclass
class WindowAccumulator:
    """One model version's accounting for one window, updated on the serving path."""

    model: str
    version: int
    start_s: float
    end_s: float
    requests: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    schema_violations: int = 0
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_EDGES_MS) + 1))
    predictions: Counter[str] = field(default_factory=Counter)
    drift: Any | None = None  # a WindowStats, or None for a model without a reference
    confusion: Any | None = None  # a ConfusionCounts, created on the first joined label
    merged: int = 1
    dirty: bool = False
    # Inputs waiting to be folded into ``drift``: binning one row at a time costs
    # far more than the inference itself, so rows are folded in vectorised batches.
    pending: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    pending_rows: int = 0

    def add_inferences(self, latencies_ms: Sequence[float], labels: np.ndarray | None) -> None:
        """Requests answered (one latency each) and the labels of all their rows."""
        counts = self.latency_counts
        for latency in latencies_ms:
            counts[bisect_left(LATENCY_EDGES_MS, latency)] += 1
        self.requests += len(latencies_ms)
        if labels is not None and labels.size:
            if labels.size <= 16:
                for value in labels.tolist():
                    self.predictions[label_key(value)] += 1
            else:
                values, value_counts = np.unique(labels, return_counts=True)
                for value, count in zip(values.tolist(), value_counts.tolist(), strict=True):
                    self.predictions[label_key(value)] += int(count)
        self.dirty = True

    def add_rows(self, X: np.ndarray, outputs: np.ndarray) -> None:
        """Queue a batch for the drift statistics (folded every FOLD_ROWS rows)."""
        if self.drift is None:
            return
        self.pending.append((X, outputs))
        self.pending_rows += len(X)
        if self.pending_rows >= FOLD_ROWS:
            self.fold()

    def fold(self) -> None:
        """Fold the queued rows into the drift statistics (big batches slice by slice)."""
        pending, self.pending, self.pending_rows = self.pending, [], 0
        if self.drift is None or not pending:
            return
        X = pending[0][0] if len(pending) == 1 else np.concatenate([x for x, _ in pending])
        y = None
        if self.drift.has_outputs:
            y = pending[0][1] if len(pending) == 1 else np.concatenate([y for _, y in pending])
        for start in range(0, len(X), FOLD_CHUNK_ROWS):
            self.drift.update(X[start : start + FOLD_CHUNK_ROWS])
            if y is not None:
                self.drift.update_outputs(y[start : start + FOLD_CHUNK_ROWS])

    def add_error(self, kind: str, schema: bool) -> None:
        self.requests += 1
        self.errors[kind] += 1
        if schema:
            self.schema_violations += 1
        self.dirty = True

    @classmethod
    def from_body(cls, body: Mapping[str, Any], codec: StatsCodec) -> WindowAccumulator:
        """Resume a window persisted by an earlier flush (after a restart)."""
        counts = [int(c) for c in body["latency_ms"]["counts"]]
        if list(body["latency_ms"]["edges"]) != list(LATENCY_EDGES_MS):
            raise TelemetryBufferError("persisted window uses other latency edges")
        drift = body.get("drift")
        confusion = body.get("confusion")
        return cls(
            model=str(body["model"]),
            version=int(body["version"]),
            start_s=float(body["start_s"]),
            end_s=float(body["end_s"]),
            requests=int(body["requests"]),
            errors=Counter({str(k): int(v) for k, v in body.get("errors", {}).items()}),
            schema_violations=int(body.get("schema_violations", 0)),
            latency_counts=counts,
            predictions=Counter({str(k): int(v) for k, v in body.get("predictions", {}).items()}),
            drift=None if not drift else codec.decode_drift(base64.b64decode(drift)),
            confusion=None if not confusion else codec.decode_confusion(confusion),
            merged=int(body.get("merged", 1)),
        )

    def to_body(self) -> dict[str, Any]:
        self.fold()
        drift = None
        if self.drift is not None:
            drift = base64.b64encode(bytes(self.drift.to_bytes())).decode("ascii")
        confusion = None if self.confusion is None else dict(self.confusion.to_dict())
        return {
            "model": self.model,
            "version": self.version,
            "start_s": self.start_s,
            "end_s": self.end_s,
            "requests": self.requests,
            "errors": dict(sorted(self.errors.items())),
            "schema_violations": self.schema_violations,
            "latency_ms": {"edges": list(LATENCY_EDGES_MS), "counts": list(self.latency_counts)},
            "predictions": dict(sorted(self.predictions.items())),
            "drift": drift,
            "confusion": confusion,
            "merged": self.merged,
        }


def _add_counts(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
    out = Counter(dict(a))
    out.update(dict(b))
    return dict(sorted(out.items()))


def merge_bodies(a: Mapping[str, Any], b: Mapping[str, Any], codec: StatsCodec) -> dict[str, Any]:
    """One body holding exactly the accounting of ``a`` followed by ``b``."""
    if (a.get("model"), a.get("version")) != (b.get("model"), b.get("version")):
        raise TelemetryBufferError(
            f"cannot merge windows of {a.get('model')}:{a.get('version')} and "
            f"{b.get('model')}:{b.get('version')}"
        )
    la, lb = a["latency_ms"], b["latency_ms"]
    if list(la["edges"]) != list(lb["edges"]):
        raise TelemetryBufferError("cannot merge windows with different latency edges")
    drift: str | None
    if a.get("drift") and b.get("drift"):
        merged = codec.merge_drift(base64.b64decode(a["drift"]), base64.b64decode(b["drift"]))
        drift = base64.b64encode(merged).decode("ascii")
    else:
        drift = a.get("drift") or b.get("drift")
    confusion: dict[str, Any] | None
    if a.get("confusion") and b.get("confusion"):
        confusion = codec.merge_confusion(a["confusion"], b["confusion"])
    else:
        confusion = a.get("confusion") or b.get("confusion")
    return {
        "model": a["model"],
        "version": a["version"],
        "start_s": min(a["start_s"], b["start_s"]),
        "end_s": max(a["end_s"], b["end_s"]),
        "requests": int(a["requests"]) + int(b["requests"]),
        "errors": _add_counts(a.get("errors", {}), b.get("errors", {})),
        "schema_violations": int(a.get("schema_violations", 0))
        + int(b.get("schema_violations", 0)),
        "latency_ms": {
            "edges": list(la["edges"]),
            "counts": [int(x) + int(y) for x, y in zip(la["counts"], lb["counts"], strict=True)],
        },
        "predictions": _add_counts(a.get("predictions", {}), b.get("predictions", {})),
        "drift": drift,
        "confusion": confusion,
        "merged": int(a.get("merged", 1)) + int(b.get("merged", 1)),
    }
