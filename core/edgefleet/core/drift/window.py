"""Window statistics: what one device saw during one time window.

A :class:`WindowStats` accumulates batches of model inputs (and optionally
model outputs) binned against a :class:`ReferenceProfile`. It is a mergeable
summary in the sense of river's ``stats``: ``update`` folds in data,
``merge`` combines two summaries of disjoint data into the summary of their
union. Merging is exact: counts and per-bin sums add, M2 combines with the
parallel formula (see :mod:`edgefleet.core.drift.moments`), min/max take the
extremes, ``start_s``/``end_s`` take the earliest start and the latest end.

Invariants
----------
- Only windows with the same ``profile_id`` merge; anything else raises
  :class:`~edgefleet.core.errors.ProfileMismatchError`.
- ``n`` counts rows given to :meth:`update`; each feature also counts its own
  finite values, NaNs and infinities, so ``n == finite + nan + inf`` for every
  numeric feature.
- ``update`` needs the profile (it holds the bin edges). A window decoded from
  bytes has none unless one is passed to :meth:`from_bytes`; merging, scoring
  and serialising never need it.

>>> import numpy as np
>>> rng = np.random.default_rng(1)
>>> profile = ReferenceProfile.build(rng.normal(size=(2000, 3)), ["a", "b", "c"])
>>> w1, w2 = WindowStats.empty(profile), WindowStats.empty(profile)
>>> w1.update(rng.normal(size=(100, 3))); w2.update(rng.normal(size=(50, 3)))
>>> both = w1.merge(w2)
>>> both.n, int(both.numeric.n()[0])
(150, 150)
>>> WindowStats.from_bytes(both.to_bytes()).n
150
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from edgefleet.core.drift.binning import CategoricalEncoder, NumericBinner
from edgefleet.core.drift.blocks import CategoricalBlock, NumericBlock
from edgefleet.core.drift.moments import safe_mean
from edgefleet.core.drift.reference import (
    CategoricalReference,
    NumericReference,
    ReferenceProfile,
)
from edgefleet.core.errors import DriftError, ProfileMismatchError


class CompiledProfile:
    """Everything ``update`` needs from a profile, precomputed once."""

    def __init__(self, profile: ReferenceProfile) -> None:
        self.profile_id = profile.profile_id
        self.n_features = len(profile.features)
        numeric = [f for f in profile.features if isinstance(f, NumericReference)]
        categorical = [f for f in profile.features if isinstance(f, CategoricalReference)]
        self.numeric_cols = np.array(
            [j for j, f in enumerate(profile.features) if isinstance(f, NumericReference)],
            dtype=np.intp,
        )
        self.categorical_cols = np.array(
            [j for j, f in enumerate(profile.features) if isinstance(f, CategoricalReference)],
            dtype=np.intp,
        )
        self.all_numeric = not categorical
        self.binner = NumericBinner(numeric)
        self.encoders = [CategoricalEncoder(f) for f in categorical]
        self.out_binner: NumericBinner | None = None
        self.out_encoder: CategoricalEncoder | None = None
        if isinstance(profile.outputs, NumericReference):
            self.out_binner = NumericBinner([profile.outputs])
        elif isinstance(profile.outputs, CategoricalReference):
            self.out_encoder = CategoricalEncoder(profile.outputs)


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


def _numeric_batch(binner: NumericBinner, x: np.ndarray) -> tuple[np.ndarray, ...]:
    """Statistics of one batch ``x`` of shape ``(rows, k)`` as NumericBlock.add arguments."""
    finite = np.isfinite(x)
    all_finite = bool(finite.all())
    slots = binner.slots(x)
    if all_finite:
        weights = x
        nan = inf = np.zeros(binner.k, dtype=np.int64)
        n = np.full(binner.k, x.shape[0], dtype=np.int64)
    else:
        slots = np.where(finite, slots, binner.trash)
        weights = np.where(finite, x, 0.0)
        n = finite.sum(axis=0)
        nan = np.isnan(x).sum(axis=0)
        inf = x.shape[0] - n - nan
    flat = slots.ravel()
    slot_counts = np.bincount(flat, minlength=binner.n_slots)
    slot_sums = np.bincount(flat, weights=weights.ravel(), minlength=binner.n_slots)
    counts, below, above = binner.fold(slot_counts)
    sums, _, _ = binner.fold(slot_sums)
    totals = np.add.reduceat(sums, binner.bin_start)
    mean = safe_mean(totals, n)
    dev = weights - mean
    if not all_finite:
        dev[~finite] = 0.0
        lo = np.where(finite, x, np.inf).min(axis=0)
        hi = np.where(finite, x, -np.inf).max(axis=0)
    else:
        lo, hi = x.min(axis=0), x.max(axis=0)
    m2 = np.einsum("ij,ij->j", dev, dev)
    return counts, sums, nan, inf, below, above, m2, lo, hi


def _categorical_batch(
    encoders: Sequence[CategoricalEncoder], columns: Sequence[np.ndarray], block: CategoricalBlock
) -> tuple[np.ndarray, np.ndarray]:
    counts = np.zeros_like(block.counts)
    nan = np.zeros_like(block.nan)
    for j, (enc, col) in enumerate(zip(encoders, columns, strict=True)):
        buckets = enc.buckets(col)
        valid = buckets >= 0
        nan[j] = buckets.size - int(valid.sum())
        s = int(block.starts[j])
        counts[s : s + enc.n_buckets] = np.bincount(buckets[valid], minlength=enc.n_buckets)
    return counts, nan


class WindowStats:
    """Mergeable per-feature statistics of one window (see module docstring)."""

    def __init__(
        self,
        profile_id: str,
        numeric: NumericBlock,
        categorical: CategoricalBlock,
        output_numeric: NumericBlock,
        output_categorical: CategoricalBlock,
        *,
        rows: int = 0,
        output_rows: int = 0,
        start_s: float | None = None,
        end_s: float | None = None,
        compiled: CompiledProfile | None = None,
    ) -> None:
        if output_numeric.k + output_categorical.k > 1:
            raise DriftError("a window has at most one output column")
        self.profile_id = profile_id
        self.numeric = numeric
        self.categorical = categorical
        self.output_numeric = output_numeric
        self.output_categorical = output_categorical
        self.rows = rows
        self.output_rows = output_rows
        self.start_s = start_s
        self.end_s = end_s
        self._compiled = compiled

    # construction -----------------------------------------------------------------
    @classmethod
    def empty(
        cls, profile: ReferenceProfile, start_s: float | None = None, end_s: float | None = None
    ) -> WindowStats:
        compiled = compile_profile(profile)
        out = profile.outputs
        return cls(
            profile.profile_id,
            NumericBlock.empty(compiled.binner.bins),
            CategoricalBlock.empty([e.n_buckets for e in compiled.encoders]),
            NumericBlock.empty([out.n_bins] if isinstance(out, NumericReference) else []),
            CategoricalBlock.empty(
                [out.n_buckets] if isinstance(out, CategoricalReference) else []
            ),
            start_s=start_s,
            end_s=end_s,
            compiled=compiled,
        )

    def attach(self, profile: ReferenceProfile) -> WindowStats:
        """Attach ``profile`` so a decoded window can take more updates."""
        if profile.profile_id != self.profile_id:
            raise ProfileMismatchError(
                f"window was built for profile {self.profile_id[:12]}, "
                f"not {profile.profile_id[:12]}"
            )
        self._compiled = compile_profile(profile)
        return self

    @property
    def n(self) -> int:
        """Rows seen by :meth:`update`."""
        return self.rows

    @property
    def has_outputs(self) -> bool:
        return self.output_numeric.k + self.output_categorical.k == 1

    def _require_compiled(self) -> CompiledProfile:
        if self._compiled is None:
            raise DriftError("this window has no profile attached; call attach(profile) first")
        return self._compiled

    # updates ----------------------------------------------------------------------
    def update(self, X: np.ndarray) -> None:
        """Fold a batch of inputs (2-D, one row per request, profile column order)."""
        c = self._require_compiled()
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != c.n_features:
            raise DriftError(f"expected a batch of shape (rows, {c.n_features}), got {X.shape}")
        if X.shape[0] == 0:
            return
        if X.dtype.kind not in "fiub":
            raise DriftError(f"inputs must be numeric, got dtype {X.dtype}")
        if c.binner.k:
            xn = X if c.all_numeric else X[:, c.numeric_cols]
            self.numeric.add(*_numeric_batch(c.binner, np.asarray(xn, dtype=np.float64)))
        if c.encoders:
            cols = [X[:, j] for j in c.categorical_cols]
            counts, nan = _categorical_batch(c.encoders, cols, self.categorical)
            self.categorical.counts += counts
            self.categorical.nan += nan
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
            x = np.asarray(y, dtype=np.float64).reshape(-1, 1)
            if x.shape[0]:
                self.output_numeric.add(*_numeric_batch(c.out_binner, x))
        elif c.out_encoder is not None:
            counts, nan = _categorical_batch([c.out_encoder], [y], self.output_categorical)
            self.output_categorical.counts += counts
            self.output_categorical.nan += nan
        else:
            raise DriftError("the reference profile has no output profile")
        self.output_rows += int(y.shape[0])

    # merging ----------------------------------------------------------------------
    def _check_mergeable(self, other: WindowStats) -> None:
        if other.profile_id != self.profile_id:
            raise ProfileMismatchError(
                f"cannot merge windows of profiles {self.profile_id[:12]} "
                f"and {other.profile_id[:12]}"
            )

    def merge(self, other: WindowStats) -> WindowStats:
        """A new window summarising both (neither input changes)."""
        self._check_mergeable(other)
        return WindowStats(
            self.profile_id,
            self.numeric.merged(other.numeric),
            self.categorical.merged(other.categorical),
            self.output_numeric.merged(other.output_numeric),
            self.output_categorical.merged(other.output_categorical),
            rows=self.rows + other.rows,
            output_rows=self.output_rows + other.output_rows,
            start_s=_earliest(self.start_s, other.start_s),
            end_s=_latest(self.end_s, other.end_s),
            compiled=self._compiled or other._compiled,
        )

    @classmethod
    def merge_all(cls, windows: Sequence[WindowStats]) -> WindowStats:
        """Merge many windows at once (vectorised; same result as chained ``merge``)."""
        if not windows:
            raise DriftError("nothing to merge")
        first = windows[0]
        for w in windows[1:]:
            first._check_mergeable(w)
        starts = [w.start_s for w in windows if w.start_s is not None]
        ends = [w.end_s for w in windows if w.end_s is not None]
        return cls(
            first.profile_id,
            NumericBlock.merge_all([w.numeric for w in windows]),
            CategoricalBlock.merge_all([w.categorical for w in windows]),
            NumericBlock.merge_all([w.output_numeric for w in windows]),
            CategoricalBlock.merge_all([w.output_categorical for w in windows]),
            rows=sum(w.rows for w in windows),
            output_rows=sum(w.output_rows for w in windows),
            start_s=min(starts) if starts else None,
            end_s=max(ends) if ends else None,
            compiled=next((w._compiled for w in windows if w._compiled is not None), None),
        )

    def copy(self) -> WindowStats:
        return WindowStats(
            self.profile_id,
            self.numeric.copy(),
            self.categorical.copy(),
            self.output_numeric.copy(),
            self.output_categorical.copy(),
            rows=self.rows,
            output_rows=self.output_rows,
            start_s=self.start_s,
            end_s=self.end_s,
            compiled=self._compiled,
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
            f"numeric={self.numeric.k}, categorical={self.categorical.k}, "
            f"outputs={self.output_rows}, start_s={self.start_s}, end_s={self.end_s})"
        )


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
    ordered = sorted(
        windows, key=lambda w: (w.start_s is not None, w.start_s if w.start_s is not None else 0.0)
    )
    return [WindowStats.merge_all(ordered[i : i + factor]) for i in range(0, len(ordered), factor)]
