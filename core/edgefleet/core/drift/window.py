"""Window statistics: what one device saw during one time window.

A :class:`WindowStats` accumulates batches of model inputs (and optionally
model outputs) binned against a :class:`ReferenceProfile`. It is a mergeable
summary in the sense of river's ``stats``: ``update`` folds in data,
``merge`` combines two summaries of disjoint data into the summary of their
union. Merging is exact: counts and per-bin sums add, M2 combines with the
parallel formula (:mod:`edgefleet.core.drift.moments`), min/max take the
extremes, ``start_s``/``end_s`` take the earliest start and the latest end.
The statistics live in flat arrays described in :mod:`.layout`.

Invariants
----------
- Only windows with the same ``profile_id`` merge; anything else raises
  :class:`~edgefleet.core.errors.ProfileMismatchError`.
- ``n`` counts rows given to :meth:`update`; every numeric feature satisfies
  ``n == finite + nan + inf``, every categorical one ``n == buckets + nan``.
- ``update`` needs the profile (it holds the bin edges). A window decoded from
  bytes has none unless one is passed to :meth:`from_bytes`; merging, scoring
  and serialising never need it.

>>> import numpy as np
>>> rng = np.random.default_rng(1)
>>> profile = ReferenceProfile.build(rng.normal(size=(2000, 3)), ["a", "b", "c"])
>>> w1, w2 = WindowStats.empty(profile), WindowStats.empty(profile)
>>> w1.update(rng.normal(size=(100, 3))); w2.update(rng.normal(size=(50, 3)))
>>> both = w1.merge(w2)
>>> both.n, both.numeric_column(0).n
(150, 150)
>>> WindowStats.from_bytes(both.to_bytes()).numeric_column(0).m2 == both.numeric_column(0).m2
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgefleet.core.drift.binning import (
    CategoricalEncoder,
    CompiledProfile,
    NumericBatch,
    compile_profile,
    numeric_batch,
)
from edgefleet.core.drift.layout import (
    OUTPUT_CATEGORICAL,
    OUTPUT_NONE,
    OUTPUT_NUMERIC,
    WindowLayout,
)
from edgefleet.core.drift.moments import merge_m2, merge_m2_many
from edgefleet.core.drift.reference import (
    ReferenceProfile,
)
from edgefleet.core.errors import DriftError, ProfileMismatchError


@dataclass(frozen=True)
class NumericColumn:
    """Read-only view of one numeric column of a window."""

    counts: np.ndarray
    sums: np.ndarray
    n: int
    nan: int
    inf: int
    below: int
    above: int
    total: float
    m2: float
    min: float
    max: float
    clipped: int = 0  # finite values beyond the safe range, clipped (see .limits)

    @property
    def mean(self) -> float | None:
        return self.total / self.n if self.n else None

    @property
    def std(self) -> float | None:
        """Population standard deviation ``sqrt(M2 / n)``."""
        return math.sqrt(self.m2 / self.n) if self.n else None


@dataclass(frozen=True)
class CategoricalColumn:
    """Read-only view of one categorical column: vocabulary..., other, unseen."""

    counts: np.ndarray
    n: int
    nan: int


class WindowStats:
    """Mergeable per-feature statistics of one window (see module docstring)."""

    def __init__(
        self,
        profile_id: str,
        layout: WindowLayout,
        ints: np.ndarray,
        adds: np.ndarray,
        m2: np.ndarray,
        mins: np.ndarray,
        maxs: np.ndarray,
        *,
        rows: int = 0,
        output_rows: int = 0,
        start_s: float | None = None,
        end_s: float | None = None,
        compiled: CompiledProfile | None = None,
    ) -> None:
        k = layout.k_num
        if (
            ints.shape != (layout.n_ints,)
            or adds.shape != (layout.n_adds,)
            or m2.shape != (k,)
            or mins.shape != (k,)
            or maxs.shape != (k,)
        ):
            raise DriftError("window arrays do not match the layout")
        self.profile_id = profile_id
        self.layout = layout
        self.ints = ints
        self.adds = adds
        self.m2 = m2
        self.mins = mins
        self.maxs = maxs
        self.rows = rows
        self.output_rows = output_rows
        self.start_s = start_s
        self.end_s = end_s
        self._compiled = compiled

    # construction -----------------------------------------------------------------
    @classmethod
    def zeros(
        cls,
        profile_id: str,
        layout: WindowLayout,
        start_s: float | None = None,
        end_s: float | None = None,
    ) -> WindowStats:
        k = layout.k_num
        return cls(
            profile_id,
            layout,
            np.zeros(layout.n_ints, dtype=np.int64),
            np.zeros(layout.n_adds, dtype=np.float64),
            np.zeros(k, dtype=np.float64),
            np.full(k, np.inf),
            np.full(k, -np.inf),
            start_s=start_s,
            end_s=end_s,
        )

    @classmethod
    def empty(
        cls, profile: ReferenceProfile, start_s: float | None = None, end_s: float | None = None
    ) -> WindowStats:
        """A window with nothing in it, ready for :meth:`update`."""
        compiled = compile_profile(profile)
        window = cls.zeros(profile.profile_id, compiled.layout, start_s, end_s)
        window._compiled = compiled
        return window

    def attach(self, profile: ReferenceProfile) -> WindowStats:
        """Attach ``profile`` so a decoded window can take more updates."""
        if profile.profile_id != self.profile_id:
            raise ProfileMismatchError(
                f"window was built for profile {self.profile_id[:12]}, "
                f"not {profile.profile_id[:12]}"
            )
        compiled = compile_profile(profile)
        if compiled.layout != self.layout:
            raise DriftError("window layout does not match its profile")
        self._compiled = compiled
        return self

    @property
    def n(self) -> int:
        """Rows seen by :meth:`update`."""
        return self.rows

    @property
    def has_outputs(self) -> bool:
        return self.layout.output != OUTPUT_NONE

    # column views -----------------------------------------------------------------
    def numeric_column(self, column: int) -> NumericColumn:
        """Numeric column ``column`` (numeric features in order, then a score output)."""
        lay = self.layout
        ints = self.ints

        def at(s: slice) -> int:
            return int(ints[s.start + column])

        return NumericColumn(
            counts=ints[lay.bin_range(column)],
            sums=self.adds[lay.bin_range(column)],
            n=at(lay.n),
            nan=at(lay.nan),
            inf=at(lay.inf),
            below=at(lay.below),
            above=at(lay.above),
            total=float(self.adds[lay.totals.start + column]),
            m2=float(self.m2[column]),
            min=float(self.mins[column]),
            max=float(self.maxs[column]),
            clipped=at(lay.clipped),
        )

    def categorical_column(self, column: int) -> CategoricalColumn:
        """Categorical column ``column`` (categorical features, then a class output)."""
        counts = self.ints[self.layout.bucket_range(column)]
        return CategoricalColumn(
            counts=counts,
            n=int(counts.sum()),
            nan=int(self.ints[self.layout.cat_nan.start + column]),
        )

    def output_column(self) -> NumericColumn | CategoricalColumn | None:
        if self.layout.output == OUTPUT_NUMERIC:
            return self.numeric_column(self.layout.k_num - 1)
        if self.layout.output == OUTPUT_CATEGORICAL:
            return self.categorical_column(self.layout.k_cat - 1)
        return None

    # updates ----------------------------------------------------------------------
    def _require_compiled(self) -> CompiledProfile:
        if self._compiled is None:
            raise DriftError("this window has no profile attached; call attach(profile) first")
        return self._compiled

    def _fold_numeric(self, first: int, b: NumericBatch) -> None:
        lay = self.layout
        k = b.n.size
        start = int(lay.bin_starts[first])
        bins = slice(start, start + b.counts.size)

        def cols(s: slice) -> slice:
            return slice(s.start + first, s.start + first + k)

        n_a = self.ints[cols(lay.n)].astype(np.float64)
        t_a = self.adds[cols(lay.totals)]
        self.m2[first : first + k] = merge_m2(
            n_a, t_a, self.m2[first : first + k], b.n.astype(np.float64), b.totals, b.m2
        )
        self.ints[bins] += b.counts
        self.ints[cols(lay.nan)] += b.nan
        self.ints[cols(lay.inf)] += b.inf
        self.ints[cols(lay.below)] += b.below
        self.ints[cols(lay.above)] += b.above
        self.ints[cols(lay.clipped)] += b.clipped
        self.ints[cols(lay.n)] += b.n
        self.adds[bins] += b.sums
        _refresh_totals(lay, self.adds)
        np.minimum(self.mins[first : first + k], b.lo, out=self.mins[first : first + k])
        np.maximum(self.maxs[first : first + k], b.hi, out=self.maxs[first : first + k])

    def _fold_categorical(
        self, column: int, encoder: CategoricalEncoder, values: np.ndarray
    ) -> None:
        buckets = encoder.buckets(values)
        valid = buckets >= 0
        self.ints[self.layout.bucket_range(column)] += np.bincount(
            buckets[valid], minlength=encoder.n_buckets
        )
        self.ints[self.layout.cat_nan.start + column] += buckets.size - int(valid.sum())

    def update(self, X: np.ndarray) -> None:
        """Fold a batch of inputs (2-D, one row per request, profile column order).

        An object array may carry string categorical features (levels from the
        reference, anything else counted as ``unseen``, ``None`` as missing); its
        numeric columns must convert to float.
        """
        c = self._require_compiled()
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != c.n_features:
            raise DriftError(f"expected a batch of shape (rows, {c.n_features}), got {X.shape}")
        if X.dtype.kind not in "fiubO":
            raise DriftError(f"inputs must be numeric (or objects), got dtype {X.dtype}")
        if X.shape[0] == 0:
            return
        if c.binner.k:
            xn = X if c.all_numeric else X[:, c.numeric_cols]
            try:
                xn = np.asarray(xn, dtype=np.float64)
            except (TypeError, ValueError) as e:
                raise DriftError(f"numeric features must be numbers: {e}") from e
            self._fold_numeric(0, numeric_batch(c.binner, xn))
        for j, (col, encoder) in enumerate(zip(c.categorical_cols, c.encoders, strict=True)):
            self._fold_categorical(j, encoder, X[:, col])
        self.rows += int(X.shape[0])

    def update_outputs(self, y: np.ndarray) -> None:
        """Fold a batch of model outputs (1-D: class labels or scores)."""
        c = self._require_compiled()
        y = np.asarray(y)
        if y.ndim != 1:
            raise DriftError(f"outputs must be 1-D, got shape {y.shape}")
        if c.out_binner is not None:
            if y.dtype.kind not in "fiub":
                raise DriftError(f"score outputs must be numeric, got dtype {y.dtype}")
            if y.size:
                x = np.asarray(y, dtype=np.float64).reshape(-1, 1)
                self._fold_numeric(self.layout.k_num - 1, numeric_batch(c.out_binner, x))
        elif c.out_encoder is not None:
            self._fold_categorical(self.layout.k_cat - 1, c.out_encoder, y)
        else:
            raise DriftError("the reference profile has no output profile")
        self.output_rows += int(y.size)

    # merging ----------------------------------------------------------------------
    def _check_mergeable(self, other: WindowStats) -> None:
        if other.profile_id != self.profile_id:
            raise ProfileMismatchError(
                f"cannot merge windows of profiles {self.profile_id[:12]} "
                f"and {other.profile_id[:12]}"
            )
        if other.layout is not self.layout and other.layout != self.layout:
            raise DriftError("windows of the same profile have different layouts (corrupt?)")

    def merge(self, other: WindowStats) -> WindowStats:
        """A new window summarising both (neither input changes)."""
        self._check_mergeable(other)
        lay = self.layout
        n_slice, t_slice = lay.n, lay.totals
        m2 = merge_m2(
            self.ints[n_slice].astype(np.float64),
            self.adds[t_slice],
            self.m2,
            other.ints[n_slice].astype(np.float64),
            other.adds[t_slice],
            other.m2,
        )
        adds = self.adds + other.adds
        _refresh_totals(lay, adds)
        return WindowStats(
            self.profile_id,
            lay,
            self.ints + other.ints,
            adds,
            m2,
            np.minimum(self.mins, other.mins),
            np.maximum(self.maxs, other.maxs),
            rows=self.rows + other.rows,
            output_rows=self.output_rows + other.output_rows,
            start_s=_earliest(self.start_s, other.start_s),
            end_s=_latest(self.end_s, other.end_s),
            compiled=self._compiled or other._compiled,
        )

    @classmethod
    def merge_all(cls, windows: Sequence[WindowStats]) -> WindowStats:
        """Merge many windows at once (vectorised; equals chained :meth:`merge`)."""
        if not windows:
            raise DriftError("nothing to merge")
        first = windows[0]
        for w in windows[1:]:
            first._check_mergeable(w)
        lay = first.layout
        ints = np.stack([w.ints for w in windows])
        adds = np.stack([w.adds for w in windows])
        m2 = merge_m2_many(
            ints[:, lay.n].astype(np.float64),
            adds[:, lay.totals],
            np.stack([w.m2 for w in windows]),
        )
        starts = [w.start_s for w in windows if w.start_s is not None]
        ends = [w.end_s for w in windows if w.end_s is not None]
        total_adds = adds.sum(axis=0)
        _refresh_totals(lay, total_adds)
        return cls(
            first.profile_id,
            lay,
            ints.sum(axis=0),
            total_adds,
            m2,
            np.stack([w.mins for w in windows]).min(axis=0),
            np.stack([w.maxs for w in windows]).max(axis=0),
            rows=sum(w.rows for w in windows),
            output_rows=sum(w.output_rows for w in windows),
            start_s=min(starts) if starts else None,
            end_s=max(ends) if ends else None,
            compiled=next((w._compiled for w in windows if w._compiled is not None), None),
        )

    def copy(self) -> WindowStats:
        return WindowStats(
            self.profile_id,
            self.layout,
            self.ints.copy(),
            self.adds.copy(),
            self.m2.copy(),
            self.mins.copy(),
            self.maxs.copy(),
            rows=self.rows,
            output_rows=self.output_rows,
            start_s=self.start_s,
            end_s=self.end_s,
            compiled=self._compiled,
        )

    def same_as(self, other: WindowStats) -> bool:
        """Bit-for-bit equality of every statistic (used by tests and the codec)."""
        return (
            self.profile_id == other.profile_id
            and self.layout == other.layout
            and (self.rows, self.output_rows) == (other.rows, other.output_rows)
            and (self.start_s, self.end_s) == (other.start_s, other.end_s)
            and all(
                np.array_equal(a, b)
                for a, b in zip(
                    (self.ints, self.adds, self.m2, self.mins, self.maxs),
                    (other.ints, other.adds, other.m2, other.mins, other.maxs),
                    strict=True,
                )
            )
        )

    # wire -------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """Compact, exact binary form (see :mod:`edgefleet.core.drift.wire`)."""
        from edgefleet.core.drift.wire import encode_window

        return encode_window(self)

    @classmethod
    def from_bytes(cls, data: bytes, profile: ReferenceProfile | None = None) -> WindowStats:
        """Decode :meth:`to_bytes` output; pass ``profile`` to keep updating it."""
        from edgefleet.core.drift.wire import decode_window

        window = decode_window(data)
        if profile is not None:
            window.attach(profile)
        return window

    def __repr__(self) -> str:
        return (
            f"WindowStats(profile_id={self.profile_id[:12]!r}, n={self.rows}, "
            f"numeric={self.layout.k_num}, categorical={self.layout.k_cat}, "
            f"output={self.layout.output}, start_s={self.start_s}, end_s={self.end_s})"
        )


def _refresh_totals(layout: WindowLayout, adds: np.ndarray) -> None:
    """Keep the invariant ``totals == per-column sum of bin sums`` bit for bit."""
    if layout.k_num:
        adds[layout.totals] = np.add.reduceat(adds[layout.sums], layout.bin_starts)


def _earliest(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def _latest(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def coarsen(windows: Sequence[WindowStats], factor: int) -> list[WindowStats]:
    """Merge runs of ``factor`` consecutive windows (ordered by ``start_s``) into one each.

    Totals stay exact; only time resolution is lost. Windows without a start
    time sort first, in their given order.
    """
    if factor < 1:
        raise DriftError("factor must be at least 1")
    ordered = sorted(windows, key=lambda w: (w.start_s is not None, w.start_s or 0.0))
    return [WindowStats.merge_all(ordered[i : i + factor]) for i in range(0, len(ordered), factor)]
