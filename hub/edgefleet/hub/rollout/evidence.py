"""Inference evidence of one model version on one device, from its telemetry windows.

A telemetry window body (docs/protocol.md) carries ``requests``, ``errors``
(kind -> n), a latency histogram ``{"edges": [...], "counts": [...]}`` and
prediction counts (label -> n). :class:`VersionStats` adds one device's windows up exactly
(counts add), so the order windows arrive in does not matter. Evidence of *several*
devices is never added up here: :meth:`VersionStats.evidence` hands each device's sum to
the fleet-wide rule in :mod:`edgefleet.core.evidence`, which pools them so that no one
device decides (trimmed, share-capped per-device rates; the p95 rule).

Invariants: every count is a non-negative integer; a malformed window is
refused with ``ValueError`` (the caller counts it) and never half-added.
Latency buckets are kept as ``(low, high]`` intervals in milliseconds, so
windows whose histograms use different edges still merge.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from edgefleet.core.drift.scores import psi
from edgefleet.core.evidence import DeviceEvidence, LatencySummary


@dataclass(frozen=True)
class VersionStats:
    """Summed evidence: requests, errors, latency buckets, prediction counts."""

    requests: int = 0
    errors: int = 0
    latency: LatencySummary = field(default_factory=LatencySummary)
    predictions: Mapping[str, int] = field(default_factory=dict)
    windows: int = 0

    @classmethod
    def from_window(cls, body: Mapping[str, Any]) -> VersionStats:
        requests = _count(body.get("requests", 0), "requests")
        raw_errors = body.get("errors") or {}
        if not isinstance(raw_errors, Mapping):
            raise ValueError("errors must be an object of kind -> count")
        errors = sum(_count(v, f"errors.{k}") for k, v in raw_errors.items())
        raw_predictions = body.get("predictions") or {}
        if not isinstance(raw_predictions, Mapping):
            raise ValueError("predictions must be an object of label -> count")
        predictions = {str(k): _count(v, f"predictions.{k}") for k, v in raw_predictions.items()}
        latency = _latency_buckets(body.get("latency_ms"))
        return cls(requests, errors, latency, predictions, 1)

    def merge(self, other: VersionStats) -> VersionStats:
        latency = self.latency.merge(other.latency)
        predictions = dict(self.predictions)
        for label, n in other.predictions.items():
            predictions[label] = predictions.get(label, 0) + n
        return VersionStats(
            self.requests + other.requests,
            self.errors + other.errors,
            latency,
            predictions,
            self.windows + other.windows,
        )

    @classmethod
    def sum(cls, items: Iterable[VersionStats]) -> VersionStats:
        total = cls()
        for item in items:
            total = total.merge(item)
        return total

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    @property
    def p95_ms(self) -> float | None:
        return self.latency.p95()

    def evidence(self, device: str) -> DeviceEvidence:
        """This device's sum, for :func:`edgefleet.core.evidence.pool`."""
        return DeviceEvidence(device, self.requests, self.errors, self.latency, self.predictions)

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": self.error_rate,
            "p95_ms": self.p95_ms,
            "predictions": dict(sorted(self.predictions.items())),
            "windows": self.windows,
        }


def prediction_psi(expected: Mapping[str, float], actual: Mapping[str, float]) -> float | None:
    """Population stability index of two label distributions, as counts or shares (None if
    one is empty).

    Computed by the core drift scores over the union of labels, so empty
    shares are filled the way Evidently does: a label seen on one side only
    gives a large but finite value.
    """
    if sum(expected.values()) == 0 or sum(actual.values()) == 0:
        return None
    labels = sorted(set(expected) | set(actual))
    return psi([expected.get(k, 0) for k in labels], [actual.get(k, 0) for k in labels])


def _count(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return value


def _latency_buckets(raw: object) -> LatencySummary:
    if raw is None:
        return LatencySummary()
    if not isinstance(raw, Mapping):
        raise ValueError("latency_ms must be an object with edges and counts")
    edges = raw.get("edges")
    counts = raw.get("counts")
    if not isinstance(edges, list) or not isinstance(counts, list):
        raise ValueError("latency_ms needs lists edges and counts")
    try:
        bounds = [float(e) for e in edges]
    except (TypeError, ValueError) as e:
        raise ValueError("latency_ms.edges must be numbers") from e
    values = [_count(c, "latency_ms.counts[]") for c in counts]
    try:
        return LatencySummary.from_histogram(bounds, values)
    except ValueError as e:
        raise ValueError(f"latency_ms: {e}") from e
