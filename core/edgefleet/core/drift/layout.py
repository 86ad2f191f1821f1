"""Where each statistic of a window lives in its flat arrays.

A window keeps all its statistics in five flat numpy arrays so that a merge is
a handful of whole-array operations however many features there are:

``ints`` (int64)::

    counts   sum(bins)    per-bin counts, numeric column after numeric column
    buckets  sum(sizes)   per-bucket counts, categorical column after column
    nan      k_num        NaNs per numeric column
    inf      k_num        +-inf per numeric column
    below    k_num        finite values under the reference minimum (also in bin 0)
    above    k_num        finite values over the reference maximum (also in the last bin)
    n        k_num        finite values per numeric column (== its bin counts summed)
    cat_nan  k_cat        NaN/None per categorical column
    clipped  k_num        finite values beyond the safe range, clipped (also in the bins)

``adds`` (float64): ``sums`` (sum(bins), per-bin sums) then ``totals`` (k_num,
per-column sums, always exactly ``numpy.add.reduceat`` of its bin sums);
``m2``, ``mins``, ``maxs`` (k_num each).

Numeric columns are the numeric features in profile order, then the score
output if the profile has one; categorical columns likewise with a class
output last. ``n`` and ``totals`` are redundant with the bins and are not sent
on the wire; they are kept so merges need no per-column reductions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgefleet.core.errors import DriftError

OUTPUT_NONE, OUTPUT_NUMERIC, OUTPUT_CATEGORICAL = "none", "numeric", "categorical"


def _starts(sizes: tuple[int, ...]) -> np.ndarray:
    return np.concatenate(([0], np.cumsum(sizes, dtype=np.int64)[:-1])).astype(np.intp)


@dataclass(frozen=True)
class WindowLayout:
    """Column sizes plus every slice into the flat arrays, computed once."""

    bins: tuple[int, ...]
    sizes: tuple[int, ...]
    output: str = OUTPUT_NONE
    # Derived in __post_init__ (merges are hot: no recomputation per access).
    k_num: int = field(init=False, repr=False, compare=False)
    k_cat: int = field(init=False, repr=False, compare=False)
    n_bins: int = field(init=False, repr=False, compare=False)
    n_buckets: int = field(init=False, repr=False, compare=False)
    bin_starts: np.ndarray = field(init=False, repr=False, compare=False)
    bucket_starts: np.ndarray = field(init=False, repr=False, compare=False)
    counts: slice = field(init=False, repr=False, compare=False)
    buckets: slice = field(init=False, repr=False, compare=False)
    nan: slice = field(init=False, repr=False, compare=False)
    inf: slice = field(init=False, repr=False, compare=False)
    below: slice = field(init=False, repr=False, compare=False)
    above: slice = field(init=False, repr=False, compare=False)
    n: slice = field(init=False, repr=False, compare=False)
    cat_nan: slice = field(init=False, repr=False, compare=False)
    clipped: slice = field(init=False, repr=False, compare=False)
    n_ints: int = field(init=False, repr=False, compare=False)
    sums: slice = field(init=False, repr=False, compare=False)
    totals: slice = field(init=False, repr=False, compare=False)
    n_adds: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.output not in (OUTPUT_NONE, OUTPUT_NUMERIC, OUTPUT_CATEGORICAL):
            raise DriftError(f"unknown output kind {self.output!r}")
        if any(b < 1 for b in self.bins) or any(s < 2 for s in self.sizes):
            raise DriftError("every numeric column needs a bin, every categorical column 2 buckets")
        if self.output == OUTPUT_NUMERIC and not self.bins:
            raise DriftError("a numeric output needs a numeric column")
        if self.output == OUTPUT_CATEGORICAL and not self.sizes:
            raise DriftError("a categorical output needs a categorical column")
        k, kc, nb, nk = len(self.bins), len(self.sizes), sum(self.bins), sum(self.sizes)
        base = nb + nk
        derived = {
            "k_num": k,
            "k_cat": kc,
            "n_bins": nb,
            "n_buckets": nk,
            "bin_starts": _starts(self.bins),
            "bucket_starts": _starts(self.sizes),
            "counts": slice(0, nb),
            "buckets": slice(nb, base),
            "nan": slice(base, base + k),
            "inf": slice(base + k, base + 2 * k),
            "below": slice(base + 2 * k, base + 3 * k),
            "above": slice(base + 3 * k, base + 4 * k),
            "n": slice(base + 4 * k, base + 5 * k),
            "cat_nan": slice(base + 5 * k, base + 5 * k + kc),
            "clipped": slice(base + 5 * k + kc, base + 6 * k + kc),
            "n_ints": base + 6 * k + kc,
            "sums": slice(0, nb),
            "totals": slice(nb, nb + k),
            "n_adds": nb + k,
        }
        for name, value in derived.items():
            object.__setattr__(self, name, value)

    def bin_range(self, column: int) -> slice:
        start = int(self.bin_starts[column])
        return slice(start, start + self.bins[column])

    def bucket_range(self, column: int) -> slice:
        start = self.n_bins + int(self.bucket_starts[column])
        return slice(start, start + self.sizes[column])
