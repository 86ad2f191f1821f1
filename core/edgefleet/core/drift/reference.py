"""Reference profiles: what "normal" looks like, summarised per feature.

A :class:`ReferenceProfile` is built once (by the packager, from the reference
data registered with a model) and shipped as ``reference.json`` inside the
bundle. Devices bin their live inputs against it; the hub scores merged device
windows against it.

Invariants
----------
- Numeric feature: ``edges`` are strictly increasing, finite and all greater
  than the reference minimum; they split the real line into ``len(edges) + 1``
  bins ``(-inf, e0), [e0, e1), ..., [e_last, +inf)`` (open outer bins, a value
  equal to an edge belongs to the bin on its right). Every bin holds at least
  one reference value, ``sum(counts) == n`` (finite values only) and
  ``n >= 1``.
- Categorical feature: ``counts`` has ``len(vocabulary) + 2`` entries — one per
  vocabulary level, then ``other`` (reference levels outside the top K), then
  ``unseen`` (always 0 in the reference). Levels are never shared between
  ``vocabulary`` and ``other_levels``.
- ``profile_id`` is the SHA-256 (hex) of the canonical JSON of everything else
  in the profile, so two profiles with the same content have the same id on
  every machine, and a window can only be merged with windows of its profile.

Edges are reference quantiles of Hyndman & Fan type 1 (inverse of the empirical
CDF, ``numpy.quantile(method="inverted_cdf")``), so every edge is an observed
value; ties are collapsed and edges equal to the minimum are dropped, which is
why a heavily tied feature gets fewer than ``n_bins`` bins.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> X = rng.normal(size=(1000, 2))
>>> p = ReferenceProfile.build(X, ["a", "b"], n_bins=10)
>>> len(p.features[0].counts), sum(p.features[0].counts)
(10, 1000)
>>> ReferenceProfile.from_json(p.to_json()).profile_id == p.profile_id
True
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from edgefleet.core.drift.limits import SAFE_ABS
from edgefleet.core.errors import DriftError
from edgefleet.core.light_sha256 import sha256_hex

NUMERIC = "numeric"
CATEGORICAL = "categorical"
FEATURE_KINDS = (NUMERIC, CATEGORICAL)
OUTPUT_KINDS = ("class", "score")
FORMAT_NAME = "edgefleet.drift.reference"
FORMAT_VERSION = 1
OUTPUT_NAME = "prediction"
# A categorical feature with more distinct reference levels than this is an id,
# not a category; profile it as numeric instead.
MAX_LEVELS = 10_000

Level = int | float | str


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8, no NaN/inf: the bytes that get hashed."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def as_level(value: Any) -> Level:
    """A JSON-safe Python scalar for a numpy or Python level value."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | str):
        return value
    if isinstance(value, float):
        if not np.isfinite(value):
            raise DriftError(f"categorical level {value!r} is not finite")
        # 1.0 and 1 must hash the same whichever dtype the reference array had.
        return int(value) if value.is_integer() and abs(value) < 2**53 else value
    raise DriftError(f"categorical level {value!r} is neither a number nor a string")


@dataclass(frozen=True)
class NumericReference:
    """Reference histogram and moments of one numeric column.

    ``std`` is the population standard deviation (``ddof=0``), as Evidently
    uses to normalise the Wasserstein distance.
    """

    kind: ClassVar[str] = NUMERIC
    name: str
    edges: tuple[float, ...]
    counts: tuple[int, ...]
    sums: tuple[float, ...]
    n: int
    mean: float
    std: float
    min: float
    max: float
    nan: int = 0
    inf: int = 0

    def __post_init__(self) -> None:
        bins = len(self.edges) + 1
        if len(self.counts) != bins or len(self.sums) != bins:
            raise DriftError(f"feature {self.name!r}: {bins} bins but counts/sums differ")
        if self.n < 1 or sum(self.counts) != self.n or min(self.counts) < 0:
            raise DriftError(f"feature {self.name!r}: counts do not add up to n={self.n}")
        values = (*self.edges, *self.sums, self.mean, self.std, self.min, self.max)
        if not all(np.isfinite(v) for v in values):
            raise DriftError(f"feature {self.name!r}: non-finite reference statistic")
        if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise DriftError(f"feature {self.name!r}: edges are not strictly increasing")
        if self.edges and not (self.min < self.edges[0] and self.edges[-1] <= self.max):
            raise DriftError(f"feature {self.name!r}: edges outside [min, max]")

    @property
    def n_bins(self) -> int:
        return len(self.edges) + 1

    @classmethod
    def from_values(cls, name: str, values: np.ndarray, n_bins: int) -> NumericReference:
        x = np.asarray(values, dtype=np.float64).ravel()
        nan = int(np.isnan(x).sum())
        finite = x[np.isfinite(x)] + 0.0  # + 0.0 turns -0.0 into 0.0
        # Clipped like window inputs (.limits): the reference's moments stay finite too.
        finite = np.clip(finite, -SAFE_ABS, SAFE_ABS)
        inf = int(x.size - nan - finite.size)
        if finite.size == 0:
            raise DriftError(f"feature {name!r} has no finite reference values")
        lo, hi = float(finite.min()), float(finite.max())
        quantiles = np.quantile(finite, np.arange(1, n_bins) / n_bins, method="inverted_cdf")
        edges = np.unique(quantiles)
        edges = edges[edges > lo]
        index = np.searchsorted(edges, finite, side="right")
        counts = np.bincount(index, minlength=edges.size + 1)
        sums = np.bincount(index, weights=finite, minlength=edges.size + 1)
        return cls(
            name=name,
            edges=tuple(float(e) for e in edges),
            counts=tuple(int(c) for c in counts),
            sums=tuple(float(s) for s in sums),
            n=int(finite.size),
            mean=float(finite.mean()),
            std=float(finite.std()),
            min=lo,
            max=hi,
            nan=nan,
            inf=inf,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "edges": list(self.edges),
            "counts": list(self.counts),
            "sums": list(self.sums),
            "n": self.n,
            "mean": self.mean,
            "std": self.std,
            "min": self.min,
            "max": self.max,
            "nan": self.nan,
            "inf": self.inf,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> NumericReference:
        return cls(
            name=str(d["name"]),
            edges=tuple(float(e) for e in d["edges"]),
            counts=tuple(int(c) for c in d["counts"]),
            sums=tuple(float(s) for s in d["sums"]),
            n=int(d["n"]),
            mean=float(d["mean"]),
            std=float(d["std"]),
            min=float(d["min"]),
            max=float(d["max"]),
            nan=int(d.get("nan", 0)),
            inf=int(d.get("inf", 0)),
        )


@dataclass(frozen=True)
class CategoricalReference:
    """Reference bucket counts of one categorical column.

    Buckets: the ``vocabulary`` levels (most frequent first), then ``other``
    (levels seen in the reference but outside the top K), then ``unseen``.
    """

    kind: ClassVar[str] = CATEGORICAL
    name: str
    vocabulary: tuple[Level, ...]
    other_levels: tuple[Level, ...]
    counts: tuple[int, ...]
    n: int
    nan: int = 0

    def __post_init__(self) -> None:
        if len(self.counts) != len(self.vocabulary) + 2:
            raise DriftError(f"feature {self.name!r}: expected {len(self.vocabulary) + 2} counts")
        if self.n < 1 or sum(self.counts) != self.n or min(self.counts) < 0:
            raise DriftError(f"feature {self.name!r}: counts do not add up to n={self.n}")
        if self.counts[-1] != 0:
            raise DriftError(f"feature {self.name!r}: the reference has no unseen levels")
        levels = (*self.vocabulary, *self.other_levels)
        if len(set(levels)) != len(levels):
            raise DriftError(f"feature {self.name!r}: a level appears twice")
        if len({isinstance(v, str) for v in levels}) > 1:
            raise DriftError(f"feature {self.name!r}: levels mix strings and numbers")

    @property
    def n_buckets(self) -> int:
        return len(self.vocabulary) + 2

    @property
    def bucket_names(self) -> tuple[str, ...]:
        return (*(str(v) for v in self.vocabulary), "other", "unseen")

    @classmethod
    def from_values(
        cls, name: str, values: np.ndarray, max_categories: int, coverage: float
    ) -> CategoricalReference:
        v = np.asarray(values).ravel()
        nan = 0
        if v.dtype.kind == "f":
            missing = np.isnan(v)
            nan = int(missing.sum())
            v = v[~missing] + 0.0
            if np.isinf(v).any():
                raise DriftError(f"categorical feature {name!r} has infinite reference values")
        if v.size == 0:
            raise DriftError(f"feature {name!r} has no reference values")
        levels, counts = np.unique(v, return_counts=True)
        if levels.size > MAX_LEVELS:
            raise DriftError(
                f"categorical feature {name!r} has {levels.size} levels (> {MAX_LEVELS}); "
                "profile it as numeric"
            )
        order = np.lexsort((np.arange(levels.size), -counts))  # by count desc, then value
        cum = np.cumsum(counts[order])
        k = int(np.searchsorted(cum, coverage * v.size - 1e-9 * v.size) + 1)
        k = min(k, max_categories, levels.size)
        top, rest = order[:k], np.sort(order[k:])
        return cls(
            name=name,
            vocabulary=tuple(as_level(x) for x in levels[top]),
            other_levels=tuple(as_level(x) for x in levels[rest]),
            counts=(*(int(c) for c in counts[top]), int(counts[rest].sum()), 0),
            n=int(v.size),
            nan=nan,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "vocabulary": list(self.vocabulary),
            "other_levels": list(self.other_levels),
            "counts": list(self.counts),
            "n": self.n,
            "nan": self.nan,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CategoricalReference:
        return cls(
            name=str(d["name"]),
            vocabulary=tuple(as_level(x) for x in d["vocabulary"]),
            other_levels=tuple(as_level(x) for x in d["other_levels"]),
            counts=tuple(int(c) for c in d["counts"]),
            n=int(d["n"]),
            nan=int(d.get("nan", 0)),
        )


ColumnReference = NumericReference | CategoricalReference


def _column_from_dict(d: Mapping[str, Any]) -> ColumnReference:
    kind = d.get("kind")
    if kind == NUMERIC:
        return NumericReference.from_dict(d)
    if kind == CATEGORICAL:
        return CategoricalReference.from_dict(d)
    raise DriftError(f"unknown feature kind {kind!r}")


@dataclass(frozen=True)
class ReferenceProfile:
    """Per-feature reference summaries plus an optional model-output profile.

    ``output_kind`` is ``"class"`` (the output profile is categorical over class
    labels) or ``"score"`` (a numeric histogram of a score or regression value);
    it is ``None`` when the profile has no outputs.
    """

    features: tuple[ColumnReference, ...]
    outputs: ColumnReference | None = None
    output_kind: str | None = None
    n_bins: int = 20
    max_categories: int = 64
    coverage: float = 0.99
    profile_id: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        names = [f.name for f in self.features]
        if not names:
            raise DriftError("a reference profile needs at least one feature")
        if len(set(names)) != len(names):
            raise DriftError("feature names must be unique")
        if (self.outputs is None) != (self.output_kind is None):
            raise DriftError("outputs and output_kind go together")
        if self.output_kind is not None and self.output_kind not in OUTPUT_KINDS:
            raise DriftError(f"output_kind must be one of {OUTPUT_KINDS}")
        # The daemon computes a profile id per model it registers: no libcrypto for that.
        expected = sha256_hex(canonical_json(self._content()))
        if not self.profile_id:
            object.__setattr__(self, "profile_id", expected)
        elif self.profile_id != expected:
            raise DriftError("profile_id does not match the profile content (edited or corrupt)")

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(f.kind for f in self.features)

    @classmethod
    def build(
        cls,
        X: np.ndarray,
        feature_names: Sequence[str],
        kinds: Sequence[str] | None = None,
        *,
        outputs: np.ndarray | None = None,
        output_kind: str = "class",
        n_bins: int = 20,
        max_categories: int = 64,
        coverage: float = 0.99,
    ) -> ReferenceProfile:
        """Profile a 2-D reference array (rows are samples) and optional 1-D outputs."""
        X = np.asarray(X)
        if X.ndim != 2:
            raise DriftError(f"reference data must be 2-D, got shape {X.shape}")
        if X.shape[1] != len(feature_names):
            raise DriftError(f"{X.shape[1]} columns but {len(feature_names)} feature names")
        kinds = list(kinds) if kinds is not None else [NUMERIC] * X.shape[1]
        if len(kinds) != X.shape[1] or any(k not in FEATURE_KINDS for k in kinds):
            raise DriftError(f"kinds must be {X.shape[1]} values from {FEATURE_KINDS}")
        if not 2 <= n_bins <= 255:
            raise DriftError("n_bins must be between 2 and 255")
        if not 1 <= max_categories <= 1024 or not 0.0 < coverage <= 1.0:
            raise DriftError("max_categories must be in 1..1024 and coverage in (0, 1]")
        columns: list[ColumnReference] = []
        for j, (name, kind) in enumerate(zip(feature_names, kinds, strict=True)):
            if kind == NUMERIC:
                columns.append(NumericReference.from_values(str(name), X[:, j], n_bins))
            else:
                columns.append(
                    CategoricalReference.from_values(str(name), X[:, j], max_categories, coverage)
                )
        out: ColumnReference | None = None
        out_kind: str | None = None
        if outputs is not None:
            y = np.asarray(outputs)
            if y.ndim != 1:
                raise DriftError(f"outputs must be 1-D, got shape {y.shape}")
            if output_kind == "class":
                # Every class is worth its own bucket: no coverage cut for labels.
                out = CategoricalReference.from_values(OUTPUT_NAME, y, max_categories, 1.0)
            elif output_kind == "score":
                out = NumericReference.from_values(OUTPUT_NAME, y, n_bins)
            else:
                raise DriftError(f"output_kind must be one of {OUTPUT_KINDS}")
            out_kind = output_kind
        return cls(
            features=tuple(columns),
            outputs=out,
            output_kind=out_kind,
            n_bins=n_bins,
            max_categories=max_categories,
            coverage=coverage,
        )

    def _content(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "n_bins": self.n_bins,
            "max_categories": self.max_categories,
            "coverage": self.coverage,
            "features": [f.to_dict() for f in self.features],
            "outputs": None if self.outputs is None else self.outputs.to_dict(),
            "output_kind": self.output_kind,
        }

    def to_dict(self) -> dict[str, Any]:
        return {**self._content(), "profile_id": self.profile_id}

    def to_json(self) -> str:
        """Canonical JSON text (sorted keys, compact) including ``profile_id``."""
        return canonical_json(self.to_dict()).decode("utf-8")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ReferenceProfile:
        try:
            if d.get("format") != FORMAT_NAME:
                raise DriftError(f"not a reference profile (format {d.get('format')!r})")
            if d.get("version") != FORMAT_VERSION:
                raise DriftError(f"unsupported reference profile version {d.get('version')!r}")
            outputs = d.get("outputs")
            return cls(
                features=tuple(_column_from_dict(f) for f in d["features"]),
                outputs=None if outputs is None else _column_from_dict(outputs),
                output_kind=d.get("output_kind"),
                n_bins=int(d["n_bins"]),
                max_categories=int(d["max_categories"]),
                coverage=float(d["coverage"]),
                profile_id=str(d.get("profile_id", "")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise DriftError(f"malformed reference profile: {e!r}") from e

    @classmethod
    def from_json(cls, text: str | bytes) -> ReferenceProfile:
        try:
            d = json.loads(text)
        except (ValueError, UnicodeDecodeError) as e:
            raise DriftError(f"reference profile is not valid JSON: {e}") from e
        if not isinstance(d, dict):
            raise DriftError("reference profile must be a JSON object")
        return cls.from_dict(d)
