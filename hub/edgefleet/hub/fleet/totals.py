"""Operational totals of telemetry windows: requests, errors, latency, predictions, labels.

The drift statistics of a window live in its ``WindowStats`` blob; everything else a window
body carries (docs/protocol.md, TelemetryBatch) is summed here.

Invariants:

- every field is a count (or a histogram of counts) so ``add`` is exact, associative and
  commutative: totals of a rollup equal the totals of the windows folded into it, whatever
  the order;
- latency histograms only add when their edges are identical; windows with other edges are
  kept in their own histogram (``latency`` maps edges -> counts) rather than re-binned;
- confusion counts only merge over the same label list; a window with a different list is
  counted in ``confusion_conflicts`` and left out (it would need a different matrix);
- ``devices`` is the set of devices whose windows were added (filled in when windows are
  rolled up; a set union, so it stays exact across merges).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from edgefleet.core.drift import ConfusionCounts
from edgefleet.core.errors import DriftError
from edgefleet.core.evidence import LatencySummary
from edgefleet.core.protocol import WindowSummary


def _add_counts(into: dict[str, int], other: Mapping[str, int]) -> None:
    for key, value in other.items():
        into[key] = into.get(key, 0) + int(value)


class WindowTotals:
    """Mergeable sums over telemetry windows (see module docstring)."""

    def __init__(self) -> None:
        self.windows = 0
        self.requests = 0
        self.errors: dict[str, int] = {}
        self.schema_violations = 0
        self.latency: dict[tuple[float, ...], list[int]] = {}
        self.predictions: dict[str, int] = {}
        self.confusion: ConfusionCounts | None = None
        self.confusion_conflicts = 0
        self.start_s: float | None = None
        self.end_s: float | None = None
        self.devices: set[str] = set()

    # construction -------------------------------------------------------------------
    @classmethod
    def of_window(cls, summary: WindowSummary) -> WindowTotals:
        t = cls()
        t.windows = 1
        t.requests = summary.requests
        t.errors = {str(k): int(v) for k, v in summary.errors.items()}
        t.schema_violations = summary.schema_violations
        if summary.latency_ms.total:
            t.latency = {summary.latency_ms.edges: list(summary.latency_ms.counts)}
        t.predictions = {str(k): int(v) for k, v in summary.predictions.items()}
        if summary.confusion is not None:
            try:
                t.confusion = ConfusionCounts.from_dict(summary.confusion)
            except DriftError:
                t.confusion_conflicts = 1
        t.start_s, t.end_s = summary.start_s, summary.end_s
        return t

    def add(self, other: WindowTotals) -> WindowTotals:
        """Fold ``other`` into this one (in place); returns self."""
        self.windows += other.windows
        self.requests += other.requests
        _add_counts(self.errors, other.errors)
        self.schema_violations += other.schema_violations
        for edges, counts in other.latency.items():
            mine = self.latency.get(edges)
            if mine is None:
                self.latency[edges] = list(counts)
            else:
                self.latency[edges] = [a + b for a, b in zip(mine, counts, strict=True)]
        _add_counts(self.predictions, other.predictions)
        self.confusion_conflicts += other.confusion_conflicts
        if other.confusion is not None:
            if self.confusion is None:
                self.confusion = ConfusionCounts(
                    other.confusion.labels, other.confusion.matrix, other.confusion.unknown
                )
            elif self.confusion.labels == other.confusion.labels:
                self.confusion = self.confusion.merge(other.confusion)
            else:
                self.confusion_conflicts += 1
        self.start_s = _pick(min, self.start_s, other.start_s)
        self.end_s = _pick(max, self.end_s, other.end_s)
        self.devices |= other.devices
        return self

    # derived ------------------------------------------------------------------------
    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def error_rate(self) -> float | None:
        return self.error_count / self.requests if self.requests else None

    @property
    def schema_violation_rate(self) -> float | None:
        """Schema violations per request (violating requests are counted in ``requests``)."""
        return self.schema_violations / self.requests if self.requests else None

    def latency_summary(self) -> dict[str, Any]:
        """p50 and p95 by core's one quantile rule (the rollout gates' and alerts' p95)."""
        latency = LatencySummary.of_histograms(self.latency.items())
        if latency.total == 0:
            return {"count": 0, "p50_ms": None, "p95_ms": None, "mixed_edges": False}
        p95 = latency.p95()
        return {
            "count": latency.total,
            "p50_ms": latency.quantile(0.5),
            "p95_ms": p95,
            # In the open top bucket the p95 is only known to exceed that bucket's edge.
            "p95_above_ms": p95 if latency.beyond_top(0.95) else None,
            "mixed_edges": len(self.latency) > 1,
        }

    # serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "windows": self.windows,
            "requests": self.requests,
            "errors": dict(sorted(self.errors.items())),
            "schema_violations": self.schema_violations,
            "latency": [
                {"edges": list(edges), "counts": counts} for edges, counts in self.latency.items()
            ],
            "predictions": dict(sorted(self.predictions.items())),
            "confusion": None if self.confusion is None else self.confusion.to_dict(),
            "confusion_conflicts": self.confusion_conflicts,
            "start_s": self.start_s,
            "end_s": self.end_s,
            "devices": sorted(self.devices),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> WindowTotals:
        t = cls()
        t.windows = int(d.get("windows", 0))
        t.requests = int(d.get("requests", 0))
        t.errors = {str(k): int(v) for k, v in dict(d.get("errors", {})).items()}
        t.schema_violations = int(d.get("schema_violations", 0))
        t.latency = {
            tuple(float(e) for e in h["edges"]): [int(c) for c in h["counts"]]
            for h in d.get("latency", [])
        }
        t.predictions = {str(k): int(v) for k, v in dict(d.get("predictions", {})).items()}
        confusion = d.get("confusion")
        t.confusion = None if confusion is None else ConfusionCounts.from_dict(confusion)
        t.confusion_conflicts = int(d.get("confusion_conflicts", 0))
        t.start_s = d.get("start_s")
        t.end_s = d.get("end_s")
        t.devices = {str(x) for x in d.get("devices", ())}
        return t

    @classmethod
    def from_json(cls, text: str) -> WindowTotals:
        return cls.from_dict(json.loads(text))


def _pick(fn: Any, a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return float(fn(a, b))
