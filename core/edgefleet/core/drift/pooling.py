"""Device windows pooled into one scope's window so that no one device decides its drift.

:meth:`WindowStats.merge_all` is exact: every row weighs the same, so a device that reports
10^6 rows outweighs a fleet reporting thousands — it alone makes the fleet drift, or hides
the drift every other device shows. :func:`pool_devices` applies the evidence rule of
:mod:`edgefleet.core.evidence` to drift statistics instead. Its input is one window per
device (each the exact merge of that device's windows); its output is one window, scored
like any other:

- **exact** when no device holds more than its capped share of the rows (the share
  ``max(max_device_share, 1 / devices)``, output rows likewise): capping would change
  nothing, so the scope is exactly the merge of its devices' data (what the pooled raw data
  shows);
- **pooled** otherwise: only devices with at least ``min_device_requests`` rows contribute;
  every partition of a column — a numeric column's bins plus its NaN and inf counts, a
  categorical column's buckets plus its missing values — is pooled part by part by
  :func:`~edgefleet.core.evidence.pooled_share_columns` (each device's share of the part,
  the extremes trimmed, the rest averaged with each device's rows as its weight, capped),
  and the scope's row count is the sum of the capped row weights, so a device that sends
  10^6 rows adds no more rows than its share. Counts are whole numbers again by largest
  remainder (they sum to the column's rows exactly). Below-range, above-range and clipped
  counts are pooled as rates the same way; each bin's centroid (its sum over its count) and
  each column's variance about the pooled mean are per-device quantities pooled by the
  same rule; min and max are the contributing devices' extremes.

The pooled window keeps the window invariants (``n == finite + nan + inf`` per numeric
column, ``n == buckets + missing`` per categorical one), so scoring, serialising and the
reports work on it unchanged. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgefleet.core.drift.layout import OUTPUT_CATEGORICAL, OUTPUT_NUMERIC, WindowLayout
from edgefleet.core.drift.window import WindowStats, _refresh_totals
from edgefleet.core.errors import DriftError
from edgefleet.core.evidence import (
    EvidenceRule,
    capped_weights,
    contributing,
    pooled_share_columns,
    robust_mean,
    robust_means,
)


def within_share(amounts: Sequence[float], rule: EvidenceRule) -> bool:
    """No device holds more than its capped share of ``amounts`` (capping changes nothing)."""
    live = [float(a) for a in amounts if a > 0]
    capped = capped_weights(live, rule.max_device_share)
    return all(c >= a for c, a in zip(capped, live, strict=True))


def needs_pooling(devices: Sequence[WindowStats], rule: EvidenceRule) -> bool:
    """Whether :func:`pool_devices` would differ from the exact merge."""
    return len(devices) > 1 and not (
        within_share([w.rows for w in devices], rule)
        and within_share([w.output_rows for w in devices], rule)
    )


def contributing_devices(devices: Sequence[WindowStats], rule: EvidenceRule) -> int:
    """How many devices' statistics count in :func:`pool_devices` of ``devices``."""
    if not needs_pooling(devices, rule):
        return sum(1 for w in devices if w.rows or w.output_rows)
    return sum(contributing([w.rows for w in devices], rule))


def pool_devices(devices: Sequence[WindowStats], rule: EvidenceRule | None = None) -> WindowStats:
    """One window for a scope from one window per device (see the module docstring)."""
    rule = rule or EvidenceRule()
    if not devices:
        raise DriftError("nothing to pool")
    for w in devices[1:]:
        devices[0]._check_mergeable(w)
    if not needs_pooling(devices, rule):
        return WindowStats.merge_all(devices)
    return _pooled(devices, rule)


def _capped_rows(amounts: np.ndarray, rule: EvidenceRule) -> tuple[np.ndarray, int]:
    """Per device, the capped weight of its rows (0 for devices that do not contribute),
    and the pooled row count (their sum, rounded)."""
    use = np.array(contributing(list(amounts), rule), dtype=bool) & (amounts > 0)
    weights = np.zeros(amounts.shape, dtype=np.float64)
    if use.any():
        weights[use] = capped_weights([float(a) for a in amounts[use]], rule.max_device_share)
    return weights, round(float(weights.sum()))


def _whole(shares: np.ndarray, total: int) -> np.ndarray:
    """``shares * total`` as integers summing to ``total`` (largest remainder)."""
    if total <= 0 or shares.sum() <= 0:
        return np.zeros(shares.shape, dtype=np.int64)
    exact = shares / shares.sum() * total
    out = np.floor(exact).astype(np.int64)
    short = total - int(out.sum())
    if short > 0:
        out[np.argsort(-(exact - out), kind="stable")[:short]] += 1
    return out


def _pooled(devices: Sequence[WindowStats], rule: EvidenceRule) -> WindowStats:
    lay: WindowLayout = devices[0].layout
    ints = np.stack([w.ints for w in devices])
    adds = np.stack([w.adds for w in devices])
    rows_w, rows = _capped_rows(np.array([w.rows for w in devices], dtype=np.float64), rule)
    out_w, out_rows = _capped_rows(
        np.array([w.output_rows for w in devices], dtype=np.float64), rule
    )
    out = WindowStats.zeros(devices[0].profile_id, lay)
    numeric_output = lay.output == OUTPUT_NUMERIC
    for j in range(lay.k_num):
        is_output = numeric_output and j == lay.k_num - 1
        weights, total = (out_w, out_rows) if is_output else (rows_w, rows)
        _pool_numeric(out, lay, j, ints, adds, devices, weights, total, rule)
    categorical_output = lay.output == OUTPUT_CATEGORICAL
    for j in range(lay.k_cat):
        is_output = categorical_output and j == lay.k_cat - 1
        weights, total = (out_w, out_rows) if is_output else (rows_w, rows)
        use = weights > 0
        buckets = lay.bucket_range(j)
        nan_at = lay.cat_nan.start + j
        parts = np.column_stack([ints[use, buckets], ints[use, nan_at]])
        counts = _whole(pooled_share_columns(parts, rule), total)
        out.ints[buckets] = counts[:-1]
        out.ints[nan_at] = counts[-1]
    out.rows, out.output_rows = rows, out_rows
    starts = [w.start_s for w in devices if w.start_s is not None]
    ends = [w.end_s for w in devices if w.end_s is not None]
    out.start_s = min(starts) if starts else None
    out.end_s = max(ends) if ends else None
    out._compiled = next((w._compiled for w in devices if w._compiled is not None), None)
    _refresh_totals(lay, out.adds)
    return out


def _pool_numeric(
    out: WindowStats,
    lay: WindowLayout,
    j: int,
    ints: np.ndarray,
    adds: np.ndarray,
    devices: Sequence[WindowStats],
    weights: np.ndarray,
    total: int,
    rule: EvidenceRule,
) -> None:
    use = weights > 0
    if not use.any():
        return
    bins = lay.bin_range(j)

    def at(s: slice) -> int:
        return s.start + j

    parts = np.column_stack([ints[use, bins], ints[use, at(lay.nan)], ints[use, at(lay.inf)]])
    counts = _whole(pooled_share_columns(parts, rule), total)
    bin_counts = counts[:-2]
    out.ints[bins] = bin_counts
    out.ints[at(lay.nan)], out.ints[at(lay.inf)] = counts[-2], counts[-1]
    finite = int(bin_counts.sum())
    out.ints[at(lay.n)] = finite
    # Below/above/clipped: rates of the column's values, pooled like the parts, kept
    # within the bins that hold them.
    column_rows = parts.sum(axis=1).astype(np.float64)
    live = column_rows > 0
    for s, bound in (
        (lay.below, bin_counts[0]),
        (lay.above, bin_counts[-1]),
        (lay.clipped, finite),
    ):
        rates = ints[use, at(s)][live].astype(np.float64) / column_rows[live]
        rate = (
            float(robust_means(rates[:, None], column_rows[live], rule)[0]) if live.any() else 0.0
        )
        out.ints[at(s)] = min(int(round(rate * total)), int(bound))
    # Each bin's centroid and the column's variance are per-device quantities too: pooled by
    # the same rule (a centroid lies inside its bin; the open outer bins are where one
    # device's extreme values would otherwise pull).
    n_dev = ints[use, at(lay.n)].astype(np.float64)
    dev_counts = ints[use, bins].astype(np.float64)
    dev_sums = adds[use, bins]
    cap = weights[use] / np.maximum(parts.sum(axis=1), 1)  # rows counted per device row
    centroids = np.divide(dev_sums, dev_counts, out=np.zeros_like(dev_sums), where=dev_counts > 0)
    pooled_centroids = robust_means(centroids, dev_counts * cap[:, None], rule)
    out.adds[bins] = np.where(bin_counts > 0, np.nan_to_num(pooled_centroids), 0.0) * bin_counts
    mean = float(out.adds[bins].sum()) / finite if finite else 0.0
    m2 = np.array([w.m2[j] for w, u in zip(devices, use, strict=True) if u])
    dev_means = adds[use, lay.totals.start + j] / np.maximum(n_dev, 1)
    spread = [
        (v / n + (mu - mean) ** 2, n * k)
        for v, n, mu, k in zip(m2, n_dev, dev_means, cap, strict=True)
        if n > 0
    ]
    out.m2[j] = (robust_mean(spread, rule) or 0.0) * finite
    kept = [w for w, u in zip(devices, use, strict=True) if u]
    out.mins[j] = min(float(w.mins[j]) for w in kept)
    out.maxs[j] = max(float(w.maxs[j]) for w in kept)
