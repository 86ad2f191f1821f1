"""Vectorised binning of a batch against reference profiles (the device hot path).

Numeric columns
---------------
Each numeric column ``j`` gets a sorted search row
``S_j = [min_j, e_0, ..., e_last, nextafter(max_j, +inf)]`` padded with ``+inf``
to a common width ``2**s - 1``. A branchless binary search run on the whole
``(rows, columns)`` batch at once gives ``r = #{s in S_j : s <= x}``, the
*slot* of ``x``:

- ``r == 0``: ``x < min_j`` (below the reference minimum; counted in bin 0),
- ``1 <= r <= B_j``: bin ``r - 1`` (``B_j = len(edges) + 1``),
- ``r == B_j + 1``: ``x > max_j`` (above the reference maximum; counted in the last bin).

``r`` equals ``numpy.searchsorted(S_j, x, side="right")`` exactly for finite
``x``; non-finite values are sent to a per-column trash slot. One
``numpy.bincount`` over all columns then yields counts and (with weights) sums
per slot. There is no per-column Python loop, which is what keeps the update
cost at a few tens of nanoseconds per value.

Categorical columns
-------------------
One ``numpy.searchsorted`` per categorical column over its sorted levels (or a
dictionary lookup of the distinct values for string levels), then a bucket
table maps each level to its vocabulary bucket or ``other``; anything else is
``unseen``.

:class:`CompiledProfile` bundles these tables for one profile (cached by
``profile_id``) and :func:`numeric_batch` turns a batch into the statistics a
window folds in.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgefleet.core.drift.layout import (
    OUTPUT_CATEGORICAL,
    OUTPUT_NONE,
    OUTPUT_NUMERIC,
    WindowLayout,
)
from edgefleet.core.drift.limits import SAFE_ABS, clip_finite
from edgefleet.core.drift.reference import (
    CategoricalReference,
    NumericReference,
    ReferenceProfile,
)
from edgefleet.core.errors import DriftError


class NumericBinner:
    """Search tables compiled from the numeric references of one profile.

    Slots per column: ``B_j + 3`` — below, ``B_j`` bins, above, trash.
    """

    def __init__(self, refs: Sequence[NumericReference]) -> None:
        self.k = len(refs)
        self.bins = np.array([r.n_bins for r in refs], dtype=np.int64)
        widest = int(self.bins.max()) + 1 if self.k else 1
        self.steps = 1
        while (1 << self.steps) - 1 < widest:
            self.steps += 1
        self.width = (1 << self.steps) - 1
        table = np.full((max(self.k, 1), self.width), np.inf)
        for j, ref in enumerate(refs):
            row = (ref.min, *ref.edges, float(np.nextafter(ref.max, np.inf)))
            table[j, : len(row)] = row
        self.table = table.ravel()
        self.first_pivot = table[:, (1 << (self.steps - 1)) - 1][: self.k].copy()
        self.row_base = np.arange(self.k, dtype=np.intp) * self.width
        slots = self.bins + 3
        self.slot_start = np.concatenate(([0], np.cumsum(slots)[:-1])).astype(np.intp)
        self.n_slots = int(slots.sum())
        self.slot_shift = self.slot_start - self.row_base
        self.trash = self.slot_start + self.bins + 2
        bin_start = np.concatenate(([0], np.cumsum(self.bins)[:-1])).astype(np.intp)
        self.bin_start = bin_start
        self.n_bins_total = int(self.bins.sum())
        # Slot -> bin gathers: interior slots map one to one, below/above fold
        # into the outer bins.
        self.interior = (
            np.concatenate(
                [
                    np.arange(s + 1, s + 1 + b)
                    for s, b in zip(self.slot_start, self.bins, strict=True)
                ]
            ).astype(np.intp)
            if self.k
            else np.zeros(0, dtype=np.intp)
        )
        self.below_slot = self.slot_start
        self.above_slot = self.slot_start + self.bins + 1
        self.first_bin = bin_start
        self.last_bin = bin_start + self.bins - 1

    def slots(self, x: np.ndarray) -> np.ndarray:
        """Global slot index of every value of ``x`` (shape ``(rows, k)``)."""
        rows = x.shape[0]
        step = 1 << (self.steps - 1)
        hit = np.greater_equal(x, self.first_pivot)
        idx = hit.view(np.int8) * np.intp(step)
        idx += self.row_base
        probe = np.empty((rows, self.k), dtype=np.intp)
        edge = np.empty((rows, self.k), dtype=np.float64)
        step >>= 1
        while step:
            np.add(idx, step - 1, out=probe)
            np.take(self.table, probe, out=edge, mode="clip")  # indexes are always in range
            np.greater_equal(x, edge, out=hit)
            # int8 multiply then add: several times faster than a masked add (where=).
            np.add(idx, hit.view(np.int8) * np.int8(step), out=idx, casting="unsafe")
            step >>= 1
        idx += self.slot_shift
        return idx

    def fold(self, slot_values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-bin totals plus below/above per column from per-slot totals."""
        per_bin = slot_values[self.interior]
        below = slot_values[self.below_slot]
        above = slot_values[self.above_slot]
        per_bin[self.first_bin] += below
        per_bin[self.last_bin] += above
        return per_bin, below, above


class CategoricalEncoder:
    """Maps raw values of one categorical column to bucket indexes.

    Buckets ``0..K-1`` are the vocabulary, ``K`` is ``other``, ``K+1`` is
    ``unseen``. NaN values get ``-1`` (counted separately by the caller).
    """

    def __init__(self, ref: CategoricalReference) -> None:
        k = len(ref.vocabulary)
        self.n_buckets = k + 2
        self.other = k
        self.unseen = k + 1
        levels = (*ref.vocabulary, *ref.other_levels)
        buckets = [*range(k), *([k] * len(ref.other_levels))]
        self.string_levels = any(isinstance(v, str) for v in levels)
        self.lookup = dict(zip(levels, buckets, strict=True))
        if self.string_levels:
            self.keys = np.zeros(0)
            self.key_bucket = np.zeros(0, dtype=np.intp)
        else:
            keys = np.array([float(v) for v in levels], dtype=np.float64)
            order = np.argsort(keys)
            self.keys = keys[order]
            self.key_bucket = np.array(buckets, dtype=np.intp)[order]

    def buckets(self, values: np.ndarray) -> np.ndarray:
        v = np.asarray(values).ravel()
        if v.dtype.kind in "fiub" and not self.string_levels:
            x = v.astype(np.float64, copy=False)
            if self.keys.size == 0:
                out = np.full(x.shape, self.unseen, dtype=np.intp)
            else:
                pos = np.searchsorted(self.keys, x)
                pos_c = np.minimum(pos, self.keys.size - 1)
                found = self.keys[pos_c] == x
                out = np.where(found, self.key_bucket[pos_c], self.unseen)
            if v.dtype.kind == "f":
                out[np.isnan(x)] = -1
            return out
        if v.dtype.kind in "fiub":
            # Numeric values against string levels: nothing can match.
            out = np.full(v.shape, self.unseen, dtype=np.intp)
            if v.dtype.kind == "f":
                out[np.isnan(v)] = -1
            return out
        # Strings or objects: look up each distinct value once.
        try:
            uniq, inverse = np.unique(v, return_inverse=True)
        except TypeError:
            # Values that do not sort together (strings and None, a missing value
            # among string levels): one dictionary lookup per distinct value instead.
            return self._buckets_unsorted(v)
        mapped = np.array([self._bucket_of(u) for u in uniq], dtype=np.intp)
        return mapped[inverse.ravel()]

    def _buckets_unsorted(self, values: np.ndarray) -> np.ndarray:
        seen: dict[object, int] = {}
        out = np.empty(values.size, dtype=np.intp)
        try:
            for i, value in enumerate(values.tolist()):
                bucket = seen.get(value)
                if bucket is None:
                    bucket = seen[value] = self._bucket_of(value)
                out[i] = bucket
        except TypeError as e:  # unhashable values (lists, dicts) are not categories
            raise DriftError(f"categorical values cannot be compared: {e}") from e
        return out

    def _bucket_of(self, value: object) -> int:
        if isinstance(value, np.generic):
            value = value.item()
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return -1
        if isinstance(value, bool):
            value = int(value)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int | float | str):
            return self.lookup.get(value, self.unseen)
        return self.unseen


class CompiledProfile:
    """Everything ``update`` needs from a profile, precomputed once."""

    def __init__(self, profile: ReferenceProfile) -> None:
        self.profile_id = profile.profile_id
        self.n_features = len(profile.features)
        numeric = [f for f in profile.features if isinstance(f, NumericReference)]
        categorical = [f for f in profile.features if isinstance(f, CategoricalReference)]
        kinds = [isinstance(f, NumericReference) for f in profile.features]
        self.numeric_cols = np.array([j for j, k in enumerate(kinds) if k], dtype=np.intp)
        self.categorical_cols = np.array([j for j, k in enumerate(kinds) if not k], dtype=np.intp)
        self.all_numeric = not categorical
        self.binner = NumericBinner(numeric)
        self.encoders = [CategoricalEncoder(f) for f in categorical]
        self.out_binner: NumericBinner | None = None
        self.out_encoder: CategoricalEncoder | None = None
        bins = [f.n_bins for f in numeric]
        sizes = [f.n_buckets for f in categorical]
        output = OUTPUT_NONE
        if isinstance(profile.outputs, NumericReference):
            self.out_binner = NumericBinner([profile.outputs])
            bins.append(profile.outputs.n_bins)
            output = OUTPUT_NUMERIC
        elif isinstance(profile.outputs, CategoricalReference):
            self.out_encoder = CategoricalEncoder(profile.outputs)
            sizes.append(profile.outputs.n_buckets)
            output = OUTPUT_CATEGORICAL
        self.layout = WindowLayout(tuple(bins), tuple(sizes), output)


_COMPILED: OrderedDict[str, CompiledProfile] = OrderedDict()


def compile_profile(profile: ReferenceProfile) -> CompiledProfile:
    """Cached by ``profile_id`` (same id means same content, hence same tables)."""
    compiled = _COMPILED.get(profile.profile_id)
    if compiled is None:
        compiled = CompiledProfile(profile)
        _COMPILED[profile.profile_id] = compiled
        while len(_COMPILED) > 16:
            _COMPILED.popitem(last=False)
    return compiled


@dataclass
class NumericBatch:
    counts: np.ndarray
    sums: np.ndarray
    nan: np.ndarray
    inf: np.ndarray
    below: np.ndarray
    above: np.ndarray
    n: np.ndarray
    totals: np.ndarray
    m2: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    clipped: np.ndarray


def numeric_batch(binner: NumericBinner, x: np.ndarray) -> NumericBatch:
    """Statistics of one batch ``x`` (float64, shape ``(rows, k)``).

    Finite values beyond ``±SAFE_ABS`` are clipped and counted (:mod:`.limits`): the
    statistics stay finite whatever a sensor sends.
    """
    finite = np.isfinite(x)
    all_finite = bool(finite.all())
    if all_finite:
        lo, hi = x.min(axis=0), x.max(axis=0)
    else:
        lo = np.where(finite, x, np.inf).min(axis=0)
        hi = np.where(finite, x, -np.inf).max(axis=0)
    # The min/max the batch needs anyway tell whether anything needs clipping.
    if (hi > SAFE_ABS).any() or (lo < -SAFE_ABS).any():
        x, clipped = clip_finite(x, finite)
        lo = np.where(finite, x, np.inf).min(axis=0)
        hi = np.where(finite, x, -np.inf).max(axis=0)
    else:
        clipped = np.zeros(binner.k, dtype=np.int64)
    slots = binner.slots(x)
    if all_finite:
        weights = x
        n = np.full(binner.k, x.shape[0], dtype=np.int64)
        nan = inf = np.zeros(binner.k, dtype=np.int64)
    else:
        slots = np.where(finite, slots, binner.trash)
        weights = np.where(finite, x, 0.0)
        n = finite.sum(axis=0)
        nan = np.isnan(x).sum(axis=0)
        inf = x.shape[0] - n - nan
    flat = slots.ravel()
    counts, below, above = binner.fold(np.bincount(flat, minlength=binner.n_slots))
    sums, _, _ = binner.fold(np.bincount(flat, weights=weights.ravel(), minlength=binner.n_slots))
    totals = np.add.reduceat(sums, binner.bin_start)
    dev = weights - np.divide(totals, n, out=np.zeros(binner.k), where=n > 0)
    if not all_finite:
        dev[~finite] = 0.0
    m2 = np.einsum("ij,ij->j", dev, dev)
    return NumericBatch(counts, sums, nan, inf, below, above, n, totals, m2, lo, hi, clipped)
