"""Column blocks: the per-feature statistics of a window, stored as flat arrays.

A :class:`NumericBlock` holds ``k`` numeric columns side by side: per-bin
``counts`` (int64) and ``sums`` (float64) concatenated column after column,
and per-column ``nan``, ``inf``, ``below`` (under the reference minimum),
``above`` (over the reference maximum), ``m2`` (sum of squared deviations
from the mean), ``min`` and ``max``. A :class:`CategoricalBlock` holds bucket
counts and ``nan`` per column.

Invariants
----------
- The finite count of a column is ``n = sum(counts of its bins)``; its mean is
  ``sum(sums of its bins) / n`` (0 when ``n == 0``), so mean and per-bin sums
  can never disagree.
- ``below``/``above`` values are also counted in the first/last bin.
- An empty column has ``m2 == 0``, ``min == +inf`` and ``max == -inf``.
- Merging adds counts and sums and combines M2 with the parallel formula; it
  is commutative, and associative up to floating-point rounding of sums.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgefleet.core.drift.moments import chan_combine, combine_many, safe_mean
from edgefleet.core.errors import DriftError


def _starts(sizes: np.ndarray) -> np.ndarray:
    return np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.intp)


def _per_column(values: np.ndarray, sizes: np.ndarray, starts: np.ndarray) -> np.ndarray:
    if sizes.size == 0:
        return np.zeros(0, dtype=values.dtype)
    return np.add.reduceat(values, starts)


@dataclass(eq=False)
class NumericBlock:
    bins: np.ndarray
    counts: np.ndarray
    sums: np.ndarray
    nan: np.ndarray
    inf: np.ndarray
    below: np.ndarray
    above: np.ndarray
    m2: np.ndarray
    min: np.ndarray
    max: np.ndarray

    def __post_init__(self) -> None:
        self.starts = _starts(self.bins)
        k, total = self.bins.size, int(self.bins.sum())
        shapes = [(self.counts, total), (self.sums, total)]
        shapes += [(a, k) for a in (self.nan, self.inf, self.below, self.above)]
        shapes += [(a, k) for a in (self.m2, self.min, self.max)]
        if any(a.shape != (size,) for a, size in shapes):
            raise DriftError("numeric block arrays do not match its layout")

    @classmethod
    def empty(cls, bins: Sequence[int] | np.ndarray) -> NumericBlock:
        b = np.asarray(bins, dtype=np.int64)
        k, total = b.size, int(b.sum())
        return cls(
            bins=b,
            counts=np.zeros(total, dtype=np.int64),
            sums=np.zeros(total, dtype=np.float64),
            nan=np.zeros(k, dtype=np.int64),
            inf=np.zeros(k, dtype=np.int64),
            below=np.zeros(k, dtype=np.int64),
            above=np.zeros(k, dtype=np.int64),
            m2=np.zeros(k, dtype=np.float64),
            min=np.full(k, np.inf),
            max=np.full(k, -np.inf),
        )

    @property
    def k(self) -> int:
        return int(self.bins.size)

    def n(self) -> np.ndarray:
        """Finite values per column."""
        return _per_column(self.counts, self.bins, self.starts)

    def totals(self) -> np.ndarray:
        """Sum of finite values per column."""
        return _per_column(self.sums, self.bins, self.starts)

    def mean(self) -> np.ndarray:
        return safe_mean(self.totals(), self.n())

    def column_counts(self, j: int) -> np.ndarray:
        s = int(self.starts[j])
        return self.counts[s : s + int(self.bins[j])]

    def column_sums(self, j: int) -> np.ndarray:
        s = int(self.starts[j])
        return self.sums[s : s + int(self.bins[j])]

    def same_layout(self, other: NumericBlock) -> bool:
        return np.array_equal(self.bins, other.bins)

    def add(
        self,
        counts: np.ndarray,
        sums: np.ndarray,
        nan: np.ndarray,
        inf: np.ndarray,
        below: np.ndarray,
        above: np.ndarray,
        m2: np.ndarray,
        lo: np.ndarray,
        hi: np.ndarray,
    ) -> None:
        """Fold the statistics of a batch (same layout) into this block in place."""
        n_a, mean_a = self.n(), self.mean()
        n_b = _per_column(counts, self.bins, self.starts)
        mean_b = safe_mean(_per_column(sums, self.bins, self.starts), n_b)
        _, _, self.m2 = chan_combine(n_a, mean_a, self.m2, n_b, mean_b, m2)
        self.counts += counts
        self.sums += sums
        self.nan += nan
        self.inf += inf
        self.below += below
        self.above += above
        np.minimum(self.min, lo, out=self.min)
        np.maximum(self.max, hi, out=self.max)

    def merged(self, other: NumericBlock) -> NumericBlock:
        if not self.same_layout(other):
            raise DriftError("numeric blocks have different bin layouts")
        _, _, m2 = chan_combine(self.n(), self.mean(), self.m2, other.n(), other.mean(), other.m2)
        return NumericBlock(
            bins=self.bins,
            counts=self.counts + other.counts,
            sums=self.sums + other.sums,
            nan=self.nan + other.nan,
            inf=self.inf + other.inf,
            below=self.below + other.below,
            above=self.above + other.above,
            m2=m2,
            min=np.minimum(self.min, other.min),
            max=np.maximum(self.max, other.max),
        )

    @classmethod
    def merge_all(cls, blocks: Sequence[NumericBlock]) -> NumericBlock:
        first = blocks[0]
        if any(not first.same_layout(b) for b in blocks[1:]):
            raise DriftError("numeric blocks have different bin layouts")
        counts = np.stack([b.counts for b in blocks])
        sums = np.stack([b.sums for b in blocks])
        if first.k:
            n = np.add.reduceat(counts, first.starts, axis=1)
            mean = safe_mean(np.add.reduceat(sums, first.starts, axis=1), n)
        else:
            n = np.zeros((len(blocks), 0), dtype=np.int64)
            mean = np.zeros((len(blocks), 0))
        _, _, m2 = combine_many(n, mean, np.stack([b.m2 for b in blocks]))

        def total(name: str) -> np.ndarray:
            return np.stack([getattr(b, name) for b in blocks]).sum(axis=0)

        return cls(
            bins=first.bins,
            counts=counts.sum(axis=0),
            sums=sums.sum(axis=0),
            nan=total("nan"),
            inf=total("inf"),
            below=total("below"),
            above=total("above"),
            m2=m2,
            min=np.stack([b.min for b in blocks]).min(axis=0),
            max=np.stack([b.max for b in blocks]).max(axis=0),
        )

    def copy(self) -> NumericBlock:
        return NumericBlock(
            *(
                a.copy()
                for a in (
                    self.bins,
                    self.counts,
                    self.sums,
                    self.nan,
                    self.inf,
                    self.below,
                    self.above,
                    self.m2,
                    self.min,
                    self.max,
                )
            )
        )


@dataclass(eq=False)
class CategoricalBlock:
    sizes: np.ndarray
    counts: np.ndarray
    nan: np.ndarray

    def __post_init__(self) -> None:
        self.starts = _starts(self.sizes)
        if self.counts.shape != (int(self.sizes.sum()),) or self.nan.shape != self.sizes.shape:
            raise DriftError("categorical block arrays do not match its layout")

    @classmethod
    def empty(cls, sizes: Sequence[int] | np.ndarray) -> CategoricalBlock:
        s = np.asarray(sizes, dtype=np.int64)
        return cls(
            sizes=s,
            counts=np.zeros(int(s.sum()), dtype=np.int64),
            nan=np.zeros(s.size, dtype=np.int64),
        )

    @property
    def k(self) -> int:
        return int(self.sizes.size)

    def n(self) -> np.ndarray:
        return _per_column(self.counts, self.sizes, self.starts)

    def column_counts(self, j: int) -> np.ndarray:
        s = int(self.starts[j])
        return self.counts[s : s + int(self.sizes[j])]

    def same_layout(self, other: CategoricalBlock) -> bool:
        return np.array_equal(self.sizes, other.sizes)

    def merged(self, other: CategoricalBlock) -> CategoricalBlock:
        if not self.same_layout(other):
            raise DriftError("categorical blocks have different bucket layouts")
        return CategoricalBlock(self.sizes, self.counts + other.counts, self.nan + other.nan)

    @classmethod
    def merge_all(cls, blocks: Sequence[CategoricalBlock]) -> CategoricalBlock:
        first = blocks[0]
        if any(not first.same_layout(b) for b in blocks[1:]):
            raise DriftError("categorical blocks have different bucket layouts")
        return cls(
            sizes=first.sizes,
            counts=np.stack([b.counts for b in blocks]).sum(axis=0),
            nan=np.stack([b.nan for b in blocks]).sum(axis=0),
        )

    def copy(self) -> CategoricalBlock:
        return CategoricalBlock(self.sizes.copy(), self.counts.copy(), self.nan.copy())
