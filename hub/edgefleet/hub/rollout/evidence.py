"""Inference evidence of one model version, aggregated from telemetry windows.

A telemetry window body (DESIGN.md §5) carries ``requests``, ``errors``
(kind -> n), a latency histogram ``{"edges": [...], "counts": [...]}`` and
prediction counts (label -> n). :class:`VersionStats` adds windows up exactly
(counts add), so the order windows arrive in does not matter.

Invariants: every count is a non-negative integer; a malformed window is
refused with ``ValueError`` (the caller counts it) and never half-added.
Latency buckets are kept as ``(low, high]`` intervals in milliseconds, so
windows whose histograms use different edges still merge; the p95 is
interpolated linearly inside the bucket that holds it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from edgefleet.core.drift.scores import psi


@dataclass(frozen=True)
class VersionStats:
    """Summed evidence: requests, errors, latency buckets, prediction counts."""

    requests: int = 0
    errors: int = 0
    latency: Mapping[tuple[float, float], int] = field(default_factory=dict)
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
        latency = dict(self.latency)
        for bucket, n in other.latency.items():
            latency[bucket] = latency.get(bucket, 0) + n
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

    def latency_quantile(self, q: float) -> float | None:
        """The ``q`` quantile of latency in ms, or None without latency data."""
        total = sum(self.latency.values())
        if total == 0:
            return None
        rank = q * total
        seen = 0
        for (low, high), n in sorted(self.latency.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            if n == 0:
                continue
            if seen + n >= rank:
                if math.isinf(high):
                    return low  # the open top bucket: report its lower edge
                frac = (rank - seen) / n
                return low + (high - low) * frac
            seen += n
        return max(low for low, _ in self.latency)  # pragma: no cover (rounding)

    @property
    def p95_ms(self) -> float | None:
        return self.latency_quantile(0.95)

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": self.error_rate,
            "p95_ms": self.p95_ms,
            "predictions": dict(sorted(self.predictions.items())),
            "windows": self.windows,
        }


def prediction_psi(expected: Mapping[str, int], actual: Mapping[str, int]) -> float | None:
    """Population stability index of two label-count distributions (None if one is empty).

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


def _latency_buckets(raw: object) -> dict[tuple[float, float], int]:
    if raw is None:
        return {}
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
    if any(not math.isfinite(b) for b in bounds) or bounds != sorted(bounds):
        raise ValueError("latency_ms.edges must be finite and increasing")
    values = [_count(c, "latency_ms.counts[]") for c in counts]
    # Three layouts are accepted: open outer bins (len(edges)+1 counts), bins
    # between edges (len(edges)-1), or one bin per upper edge (len(edges)).
    if len(values) == len(bounds) + 1:
        lows = [0.0, *bounds]
        highs = [*bounds, math.inf]
    elif len(values) == len(bounds) - 1:
        lows, highs = bounds[:-1], bounds[1:]
    elif len(values) == len(bounds):
        lows, highs = [0.0, *bounds[:-1]], bounds
    else:
        raise ValueError("latency_ms.counts does not fit latency_ms.edges")
    buckets: dict[tuple[float, float], int] = {}
    for low, high, n in zip(lows, highs, values, strict=True):
        if n:
            key = (max(0.0, low), high)
            buckets[key] = buckets.get(key, 0) + n
    return buckets
