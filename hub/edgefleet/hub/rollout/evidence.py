"""Inference evidence of one model version on one device, from its telemetry windows.

The gates read the fleet tables' window rows: each carries the window's operational totals
(:class:`~edgefleet.hub.fleet.totals.WindowTotals`: requests, errors by kind, latency
histograms, prediction counts), checked when the fleet ingest stored it (a malformed window
is stored as ``malformed`` and never reaches here). :class:`VersionStats` adds one device's
windows up exactly (counts add), so the order windows arrive in does not matter. Evidence
of *several* devices is never added up here: :meth:`VersionStats.evidence` hands each
device's sum to the fleet-wide rule in :mod:`edgefleet.core.evidence`, which pools them so
that no one device decides (trimmed, share-capped per-device rates; the p95 rule).

Latency buckets are kept as ``(low, high]`` intervals in milliseconds, so windows whose
histograms use different edges still merge.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from edgefleet.core.drift.scores import psi
from edgefleet.core.evidence import DeviceEvidence, LatencySummary
from edgefleet.hub.fleet.totals import WindowTotals


@dataclass(frozen=True)
class VersionStats:
    """Summed evidence: requests, errors, latency buckets, prediction counts."""

    requests: int = 0
    errors: int = 0
    latency: LatencySummary = field(default_factory=LatencySummary)
    predictions: Mapping[str, int] = field(default_factory=dict)
    windows: int = 0

    @classmethod
    def from_totals(cls, totals: WindowTotals) -> VersionStats:
        """The evidence of stored windows' totals (one window's, or several merged)."""
        return cls(
            totals.requests,
            totals.error_count,
            LatencySummary.of_histograms(totals.latency.items()),
            dict(totals.predictions),
            totals.windows,
        )

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
