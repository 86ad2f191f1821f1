"""Evidence pooled across devices so that no one device decides: the rule, in one place.

Rollout gates and fleet alerts judge a model version by evidence many devices send. Added up
naively, one device claiming a huge number of requests outweighs the fleet: with 10^15
error-free requests it passes a version the honest devices show failing, with as many
errors it aborts any rollout, and its prediction counts poison the baseline. The telemetry
bounds (:mod:`edgefleet.core.protocol.bounds`) stop impossible numbers; this module stops
plausible ones from dominating. Pure: no I/O, no clock.

The rule (:func:`pool`), for every per-device quantity (error rate, p95 latency, the share of
each predicted label):

1. **contributing devices** are those with at least ``min_device_requests`` requests (all
   devices with any request when none reaches it); their number is reported as
   ``devices``;
2. **trimming**: with three or more contributing devices (and ``trim_share > 0``; 0 turns
   trimming off), the ``max(1, floor(trim_share * n))`` devices with the lowest and as many with the highest value are dropped, so one
   device (or up to ``trim_share`` of them) at either extreme cannot move the result;
3. **capped weights**: the rest are averaged, each weighted by its own amount of evidence
   (requests, answered requests, predictions) but no device weighs more than
   ``max(max_device_share, 1 / m)`` of the total (m devices left; the excess is cut by
   water-filling, so below ``1 / max_device_share`` devices they weigh the same).

Robustness therefore needs three devices: with two, each gets half, and the gates say how
many devices contributed so a reader can tell. Request *counts* (what ``min_inferences``
compares) are summed as sent: inflating them only makes the gates judge sooner, and what
they judge is decided by the rule above.

Drift statistics follow the same rule (:func:`pooled_share_columns`, used by
:mod:`edgefleet.core.drift.pooling`): a device's rows weigh like its requests, each histogram
bin's share is a per-device quantity like a label's share, so a scope's distribution is the
trimmed, share-capped mean of its devices' distributions — and the exact merge whenever no
device holds more than its capped share of the rows (capping then changes nothing).

The single p95 rule lives here too: :class:`LatencySummary` holds latency buckets
``(low, high]`` in ms and :meth:`LatencySummary.p95` interpolates linearly inside the
bucket holding the 95th percentile (the open top bucket reports its lower edge).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DEFAULT_TRIM_SHARE = 0.1
DEFAULT_MAX_DEVICE_SHARE = 0.25
DEFAULT_MIN_DEVICE_REQUESTS = 10

Bucket = tuple[float, float]  # (low, high] in milliseconds


@dataclass(frozen=True)
class LatencySummary:
    """Latency counts by ``(low, high]`` bucket in ms; merges across different edges."""

    buckets: Mapping[Bucket, int] = field(default_factory=dict)

    @classmethod
    def from_histogram(cls, edges: Sequence[float], counts: Sequence[int]) -> LatencySummary:
        """From a histogram's edges and counts, in any of three layouts (ValueError else):
        open outer bins (``len(edges) + 1`` counts, the protocol's), bins between edges
        (``len(edges) - 1``), or one bin per upper edge (``len(edges)``)."""
        bounds = [float(e) for e in edges]
        if any(not math.isfinite(b) for b in bounds) or bounds != sorted(bounds):
            raise ValueError("latency edges must be finite and increasing")
        if any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in counts):
            raise ValueError("latency counts must be non-negative integers")
        if len(counts) == len(bounds) + 1:
            lows, highs = [0.0, *bounds], [*bounds, math.inf]
        elif len(counts) == len(bounds) - 1:
            lows, highs = bounds[:-1], bounds[1:]
        elif len(counts) == len(bounds):
            lows, highs = [0.0, *bounds[:-1]], bounds
        else:
            raise ValueError("latency counts do not fit the edges")
        buckets: dict[Bucket, int] = {}
        for low, high, n in zip(lows, highs, counts, strict=True):
            if n:
                key = (max(0.0, low), high)
                buckets[key] = buckets.get(key, 0) + n
        return cls(buckets)

    @classmethod
    def of_histograms(
        cls, histograms: Iterable[tuple[Sequence[float], Sequence[int]]]
    ) -> LatencySummary:
        """Several ``(edges, counts)`` histograms (edges may differ) as one summary."""
        out = cls()
        for edges, counts in histograms:
            out = out.merge(cls.from_histogram(edges, counts))
        return out

    @property
    def total(self) -> int:
        return sum(self.buckets.values())

    def merge(self, other: LatencySummary) -> LatencySummary:
        out = dict(self.buckets)
        for bucket, n in other.buckets.items():
            out[bucket] = out.get(bucket, 0) + n
        return LatencySummary(out)

    def _locate(self, q: float) -> tuple[Bucket, float] | None:
        """The bucket holding the ``q`` quantile and the quantile's share into it."""
        total = self.total
        if total == 0:
            return None
        rank = q * total
        seen = 0
        ordered = sorted(self.buckets.items(), key=lambda kv: (kv[0][1], kv[0][0]))
        for bucket, n in ordered:
            if n == 0:
                continue
            if seen + n >= rank:
                return bucket, (rank - seen) / n
            seen += n
        return ordered[-1][0], 1.0  # pragma: no cover (rounding)

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile in ms (None without data), interpolated inside its bucket."""
        found = self._locate(q)
        if found is None:
            return None
        (low, high), into = found
        if math.isinf(high):
            return low  # the open top bucket: report its lower edge
        return low + (high - low) * into

    def beyond_top(self, q: float) -> bool:
        """Whether the ``q`` quantile lies in the open top bucket (only known to exceed
        :meth:`quantile`'s answer)."""
        found = self._locate(q)
        return found is not None and math.isinf(found[0][1])

    def p95(self) -> float | None:
        """THE p95 of edgefleet: agent probation, rollout gates, fleet alerts and reports."""
        return self.quantile(0.95)


@dataclass(frozen=True)
class DeviceEvidence:
    """One device's evidence for one model version (its own windows summed exactly)."""

    device: str
    requests: int = 0
    errors: int = 0
    latency: LatencySummary = field(default_factory=LatencySummary)
    predictions: Mapping[str, int] = field(default_factory=dict)

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    def merge(self, other: DeviceEvidence) -> DeviceEvidence:
        """More evidence of the same device (counts add)."""
        predictions = dict(self.predictions)
        for label, n in other.predictions.items():
            predictions[label] = predictions.get(label, 0) + n
        return DeviceEvidence(
            self.device,
            self.requests + other.requests,
            self.errors + other.errors,
            self.latency.merge(other.latency),
            predictions,
        )


@dataclass(frozen=True)
class EvidenceRule:
    """The knobs of :func:`pool` (see the module docstring)."""

    trim_share: float = DEFAULT_TRIM_SHARE
    max_device_share: float = DEFAULT_MAX_DEVICE_SHARE
    min_device_requests: int = DEFAULT_MIN_DEVICE_REQUESTS

    def __post_init__(self) -> None:
        if not 0 <= self.trim_share < 0.5:
            raise ValueError("trim_share must be within [0, 0.5)")
        if not 0 < self.max_device_share <= 1:
            raise ValueError("max_device_share must be within (0, 1]")
        if self.min_device_requests < 1:
            raise ValueError("min_device_requests must be at least 1")


@dataclass(frozen=True)
class PooledEvidence:
    """What the fleet's devices show together, by the rule of the module docstring."""

    devices: int = 0  # devices whose evidence contributed to the rates
    requests: int = 0  # summed as sent
    errors: int = 0  # summed as sent
    windows: int = 0
    error_rate: float | None = None
    p95_ms: float | None = None
    prediction_shares: Mapping[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "devices": self.devices,
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": self.error_rate,
            "p95_ms": self.p95_ms,
            "prediction_shares": dict(sorted(self.prediction_shares.items())),
            "windows": self.windows,
        }


def capped_weights(weights: Sequence[float], max_share: float) -> list[float]:
    """``weights`` with the largest lowered to a common level so that none exceeds
    ``max(max_share, 1 / len)`` of the total (water-filling; order kept)."""
    n = len(weights)
    if n == 0:
        return []
    share = max(max_share, 1.0 / n)
    ordered = sorted(weights)
    # Find the level L: every weight above L is cut to L, and L = share * total after cuts.
    below = 0.0  # sum of the weights left uncut so far (the smallest ones)
    level = math.inf
    for i, w in enumerate(ordered):
        cut = n - i  # weights from i on would be cut to L
        # L = share * (below + cut * L)  =>  L = share * below / (1 - share * cut)
        denominator = 1.0 - share * cut
        if denominator > 1e-12:
            candidate = share * below / denominator
            if candidate <= w:
                level = candidate
                break
        below += w
    if math.isinf(level):
        return list(weights)
    if level <= 0:  # only possible when the smallest weights are zero: keep them equal
        return [1.0] * n
    return [min(w, level) for w in weights]


def robust_mean(values: Sequence[tuple[float, float]], rule: EvidenceRule) -> float | None:
    """Trimmed, share-capped weighted mean of ``(value, weight)`` pairs (None: no pair)."""
    items = sorted((v, w) for v, w in values if w > 0)
    n = len(items)
    if n == 0:
        return None
    if n == 1:  # one device's value as it is (v * w / w may be off by a rounding step)
        return items[0][0]
    if n >= 3 and rule.trim_share > 0:
        k = max(1, math.floor(rule.trim_share * n))
        items = items[k : n - k]
    weights = capped_weights([w for _, w in items], rule.max_device_share)
    total = sum(weights)
    return sum(v * w for (v, _), w in zip(items, weights, strict=True)) / total


def pool(
    devices: Iterable[DeviceEvidence], rule: EvidenceRule | None = None, *, windows: int = 0
) -> PooledEvidence:
    """Pool per-device evidence by the rule of the module docstring."""
    rule = rule or EvidenceRule()
    everyone = [d for d in devices if d.requests > 0 or d.latency.total or d.predictions]
    requests = sum(d.requests for d in everyone)
    errors = sum(d.errors for d in everyone)
    active = [d for d in everyone if d.requests >= rule.min_device_requests]
    if not active:
        active = [d for d in everyone if d.requests > 0] or everyone
    error_rate = robust_mean(
        [(d.errors / d.requests, float(d.requests)) for d in active if d.requests], rule
    )
    p95s = [(d.latency.p95(), float(d.latency.total)) for d in active]
    p95 = robust_mean([(p, w) for p, w in p95s if p is not None], rule)
    return PooledEvidence(
        devices=len(active),
        requests=requests,
        errors=errors,
        windows=windows,
        error_rate=error_rate,
        p95_ms=p95,
        prediction_shares=pooled_shares([d.predictions for d in active], rule),
    )


def pooled_shares(counts: Sequence[Mapping[str, int]], rule: EvidenceRule) -> dict[str, float]:
    """Each label's share per device, pooled by :func:`robust_mean`, then renormalised."""
    per_device = [(c, sum(c.values())) for c in counts]
    per_device = [(c, t) for c, t in per_device if t > 0]
    labels = sorted({label for c, _ in per_device for label in c})
    raw: dict[str, float] = {}
    for label in labels:
        share = robust_mean([(c.get(label, 0) / t, float(t)) for c, t in per_device], rule)
        if share:
            raw[label] = share
    total = sum(raw.values())
    return {label: v / total for label, v in raw.items()} if total > 0 else {}


def contributing(amounts: Sequence[float], rule: EvidenceRule) -> list[bool]:
    """Step 1 of the rule for any per-device amount (requests, rows): which devices count."""
    enough = [a >= rule.min_device_requests for a in amounts]
    return enough if any(enough) else [a > 0 for a in amounts]


def robust_means(values: np.ndarray, weights: np.ndarray, rule: EvidenceRule) -> np.ndarray:
    """:func:`robust_mean` of every column of ``values`` (shape ``(devices, columns)``) at
    once: ``weights`` is per device (shape ``(devices,)``) or per device and column; a
    device with weight 0 in a column is absent from it. Vectorised across columns, so a
    histogram of hundreds of bins costs a handful of array operations per device. A column
    with no device present is NaN."""
    m, s = values.shape
    w = np.array(np.broadcast_to(np.asarray(weights, dtype=np.float64).reshape(m, -1), (m, s)))
    present = w > 0
    n = present.sum(axis=0)
    key = np.where(present, values, np.inf)  # absent devices sort last
    order = np.lexsort((w, key), axis=0)  # by value, then weight: as robust_mean sorts
    v_sorted = np.take_along_axis(key, order, axis=0)
    w_sorted = np.take_along_axis(w, order, axis=0)
    rank = np.arange(m)[:, None]
    k = np.zeros(s, dtype=np.int64)
    if rule.trim_share > 0:
        k = np.where(n >= 3, np.maximum(1, np.floor(rule.trim_share * n)), 0).astype(np.int64)
    kept = (rank >= k) & (rank < n - k)
    capped = _capped_columns(np.where(kept, w_sorted, 0.0), kept.sum(axis=0), rule)
    total = capped.sum(axis=0)
    weighted = (np.where(kept, v_sorted, 0.0) * capped).sum(axis=0)
    return np.divide(weighted, total, out=np.full(s, np.nan), where=total > 0)


def _capped_columns(weights: np.ndarray, counts: np.ndarray, rule: EvidenceRule) -> np.ndarray:
    """:func:`capped_weights` of the positive entries of every column of ``weights``
    (``counts`` of them per column; zeros stay zero), vectorised."""
    m = weights.shape[0]
    share = np.maximum(rule.max_device_share, 1.0 / np.maximum(counts, 1))
    ordered = np.sort(weights, axis=0)  # zeros (absent) first
    below = np.cumsum(ordered, axis=0) - ordered  # sum of the weights before each
    # The level of each column is the first sorted position i where the candidate fits
    # (as capped_weights finds it, for all positions and columns at once).
    denominator = 1.0 - share[None, :] * (m - np.arange(m))[:, None]  # m - i would be cut
    with np.errstate(divide="ignore", invalid="ignore"):
        candidate = share[None, :] * below / denominator
    fits = (ordered > 0) & (denominator > 1e-12) & (candidate <= ordered)
    first = np.argmax(fits, axis=0)
    level = np.where(fits.any(axis=0), candidate[first, np.arange(weights.shape[1])], np.inf)
    return np.minimum(weights, level[None, :])


def pooled_share_columns(counts: np.ndarray, rule: EvidenceRule) -> np.ndarray:
    """:func:`pooled_shares` of a partition: ``counts`` has one row per device and one
    column per part (a histogram's bins); devices with nothing in it are left out; each
    part's share is pooled by :func:`robust_means`, then renormalised to sum to 1.

    When trimming leaves every part empty (devices that all disagree), the shares are the
    capped mean without trimming, so a non-empty partition never pools to nothing."""
    totals = counts.sum(axis=1)
    keep = totals > 0
    if not keep.any():
        return np.zeros(counts.shape[1])
    shares = counts[keep] / totals[keep, None]
    weights = totals[keep].astype(np.float64)
    pooled = robust_means(shares, weights, rule)
    if pooled.sum() <= 0:
        untrimmed = EvidenceRule(0.0, rule.max_device_share, rule.min_device_requests)
        pooled = robust_means(shares, weights, untrimmed)
    return pooled / pooled.sum()
