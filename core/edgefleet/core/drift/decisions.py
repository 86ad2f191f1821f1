"""Per-feature verdicts, dataset drift and prediction drift for one window.

Verdict of a feature (numeric or categorical) with ``n`` finite values in the
window, thresholds ``t`` (defaults in docs/drift.md, Decisions):

1. ``n < t.min_n`` (300): ``"insufficient_data"`` — never ``"no_drift"``; the
   hub merges small windows over time until they qualify.
2. ``"drift"`` when the binned distribution moved both *far enough* and
   *significantly*:

   - (PSI >= ``psi_drift`` (0.2) or JS >= ``js_drift`` (0.1)) and the
     chi-square homogeneity p-value < ``p_value`` (1e-4), or
   - numeric only, ``n >= min_n_wasserstein`` (1000): W1/std >= ``wasserstein_drift``
     (0.1) and the binned KS p-value, the mean-shift (Welch z) p-value or the
     variance-ratio p-value is < ``p_value``. The mean test catches what bins
     cannot see, e.g. the top 5 % of values stretched far out inside the open
     last bin; the variance test a change of spread alone, e.g. on a feature
     that is mostly zeros, which moves neither KS nor the mean.
3. ``"warn"`` when PSI >= ``psi_warn`` (0.1) and the chi-square p-value <
   ``p_value``.
4. otherwise ``"no_drift"``.

Why the significance gate: at the minimum window sizes the distance scores are
dominated by sampling noise. With 20 bins and n = 300 a window drawn from the
reference itself has E[PSI] ~ 19/300 and JS ~ 0.09, so "JS >= 0.1" alone fires
on ~20 % of such windows; at n = 1000 the 99th percentile of W1/std under no
drift is ~0.1 for common distributions. Requiring p < 1e-4 as well keeps false
alarms near 1e-4 per feature and window (so a 64-feature model sees a spurious
drifted feature in < 1 % of windows), while any shift large enough to cross
the distance thresholds at n >= 300 is overwhelmingly significant (PSI 0.25 at
n = 300 is chi-square ~ 95 on 19 dof, p ~ 1e-11).

Dataset drift: ``drift_share = drifted / features with a verdict``
(``insufficient_data`` features are left out); ``dataset_drift`` is
``drift_share >= dataset_drift_share`` (0.5), or ``None`` when no feature has
enough data. Prediction drift applies the same rules to the output profile.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from edgefleet.core.drift.reference import (
    CATEGORICAL,
    NUMERIC,
    CategoricalReference,
    ColumnReference,
    NumericReference,
    ReferenceProfile,
)
from edgefleet.core.drift.scores import (
    binned_kurtosis,
    chi2_homogeneity,
    js_distance,
    ks_binned,
    mean_shift_pvalue,
    psi,
    variance_ratio_pvalue,
    wasserstein_centroids,
)
from edgefleet.core.drift.window import CategoricalColumn, NumericColumn, WindowStats
from edgefleet.core.errors import DriftError, ProfileMismatchError

DRIFT, WARN, NO_DRIFT, INSUFFICIENT = "drift", "warn", "no_drift", "insufficient_data"


@dataclass(frozen=True)
class DriftThresholds:
    """Decision thresholds; defaults in docs/drift.md (plus the significance gate)."""

    psi_warn: float = 0.1
    psi_drift: float = 0.2
    js_drift: float = 0.1
    wasserstein_drift: float = 0.1
    min_n: int = 300  # PSI, JS, chi-square, KS
    min_n_wasserstein: int = 1000
    p_value: float = 1e-4
    dataset_drift_share: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.psi_warn <= self.psi_drift:
            raise DriftError("need 0 < psi_warn <= psi_drift")
        if self.js_drift <= 0 or self.wasserstein_drift <= 0:
            raise DriftError("js_drift and wasserstein_drift must be positive")
        if self.min_n < 1 or self.min_n_wasserstein < self.min_n:
            raise DriftError("need 1 <= min_n <= min_n_wasserstein")
        if not 0 < self.p_value < 1 or not 0 < self.dataset_drift_share <= 1:
            raise DriftError("p_value must be in (0, 1) and dataset_drift_share in (0, 1]")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DriftThresholds:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


@dataclass(frozen=True)
class FeatureScore:
    """Scores and verdict of one feature (or of the model output)."""

    name: str
    kind: str
    n: int
    verdict: str
    psi: float | None = None
    js: float | None = None
    wasserstein: float | None = None
    ks: float | None = None
    ks_pvalue: float | None = None
    mean_pvalue: float | None = None
    variance_ratio: float | None = None
    variance_pvalue: float | None = None
    chi2: float | None = None
    chi2_pvalue: float | None = None
    nan: int = 0
    inf: int = 0
    below_min: int = 0
    above_max: int = 0
    clipped: int = 0
    unseen: int = 0
    mean: float | None = None
    std: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: _json_number(v) for k, v in asdict(self).items()}


def _json_number(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


@dataclass(frozen=True)
class DriftReport:
    profile_id: str
    n: int
    start_s: float | None
    end_s: float | None
    features: tuple[FeatureScore, ...]
    dataset_drift: bool | None
    drift_share: float | None
    n_drifted: int
    prediction: FeatureScore | None
    thresholds: DriftThresholds = field(default_factory=DriftThresholds)

    def feature(self, name: str) -> FeatureScore:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "profile_id": self.profile_id,
            "n": self.n,
            "start_s": self.start_s,
            "end_s": self.end_s,
            "features": {f.name: f.to_dict() for f in self.features},
            "dataset_drift": self.dataset_drift,
            "drift_share": self.drift_share,
            "n_drifted": self.n_drifted,
            "prediction": None if self.prediction is None else self.prediction.to_dict(),
            "thresholds": self.thresholds.to_dict(),
        }


def _verdict(
    n: int,
    psi_v: float,
    js_v: float,
    chi2_p: float,
    t: DriftThresholds,
    wasserstein_v: float | None = None,
    location_p: float | None = None,
) -> str:
    significant = chi2_p < t.p_value
    if significant and (psi_v >= t.psi_drift or js_v >= t.js_drift):
        return DRIFT
    if (
        wasserstein_v is not None
        and location_p is not None
        and n >= t.min_n_wasserstein
        and wasserstein_v >= t.wasserstein_drift
        and location_p < t.p_value
    ):
        return DRIFT
    if significant and psi_v >= t.psi_warn:
        return WARN
    return NO_DRIFT


def score_numeric(ref: NumericReference, col: NumericColumn, t: DriftThresholds) -> FeatureScore:
    """Scores and verdict of one numeric column against its reference."""
    base: dict[str, Any] = {
        "name": ref.name,
        "kind": NUMERIC,
        "n": col.n,
        "nan": col.nan,
        "inf": col.inf,
        "below_min": col.below,
        "above_max": col.above,
        "clipped": col.clipped,
        "mean": col.mean,
        "std": col.std,
    }
    if col.n < t.min_n:
        return FeatureScore(verdict=INSUFFICIENT, **base)
    rc = np.asarray(ref.counts)
    psi_v, js_v = psi(rc, col.counts), js_distance(rc, col.counts)
    chi2_v, chi2_p, _ = chi2_homogeneity(rc, col.counts)
    ks_v, ks_p = ks_binned(rc, col.counts)
    w_v = wasserstein_centroids(rc, np.asarray(ref.sums), col.counts, col.sums, ref.std)
    mean_p = mean_shift_pvalue(ref.n, ref.mean, ref.std, col.n, col.mean or 0.0, col.std or 0.0)
    win_mean, win_std = col.mean or 0.0, col.std or 0.0
    ratio, var_p = variance_ratio_pvalue(
        ref.n,
        ref.std,
        binned_kurtosis(rc, ref.sums, ref.mean, ref.std, ref.min, ref.max),
        col.n,
        win_std,
        binned_kurtosis(col.counts, col.sums, win_mean, win_std, col.min, col.max),
    )
    return FeatureScore(
        verdict=_verdict(col.n, psi_v, js_v, chi2_p, t, w_v, min(ks_p, mean_p, var_p)),
        psi=psi_v,
        js=js_v,
        wasserstein=w_v,
        ks=ks_v,
        ks_pvalue=ks_p,
        mean_pvalue=mean_p,
        variance_ratio=ratio,
        variance_pvalue=var_p,
        chi2=chi2_v,
        chi2_pvalue=chi2_p,
        **base,
    )


def score_categorical(
    ref: CategoricalReference, col: CategoricalColumn, t: DriftThresholds
) -> FeatureScore:
    """Scores and verdict of one categorical column against its reference."""
    base: dict[str, Any] = {
        "name": ref.name,
        "kind": CATEGORICAL,
        "n": col.n,
        "nan": col.nan,
        "unseen": int(col.counts[-1]),
    }
    if col.n < t.min_n:
        return FeatureScore(verdict=INSUFFICIENT, **base)
    rc = np.asarray(ref.counts)
    psi_v, js_v = psi(rc, col.counts), js_distance(rc, col.counts)
    chi2_v, chi2_p, _ = chi2_homogeneity(rc, col.counts)
    return FeatureScore(
        verdict=_verdict(col.n, psi_v, js_v, chi2_p, t),
        psi=psi_v,
        js=js_v,
        chi2=chi2_v,
        chi2_pvalue=chi2_p,
        **base,
    )


def _score_any(
    ref: ColumnReference, col: NumericColumn | CategoricalColumn, t: DriftThresholds
) -> FeatureScore:
    if isinstance(ref, NumericReference) and isinstance(col, NumericColumn):
        return score_numeric(ref, col, t)
    if isinstance(ref, CategoricalReference) and isinstance(col, CategoricalColumn):
        return score_categorical(ref, col, t)
    raise DriftError(f"column {ref.name!r} does not match its reference kind")


def score_window(
    profile: ReferenceProfile, window: WindowStats, thresholds: DriftThresholds | None = None
) -> DriftReport:
    """Score every feature (and the outputs, if profiled and observed) of ``window``."""
    t = thresholds if thresholds is not None else DriftThresholds()
    if window.profile_id != profile.profile_id:
        raise ProfileMismatchError(
            f"window belongs to profile {window.profile_id[:12]}, not {profile.profile_id[:12]}"
        )
    scores: list[FeatureScore] = []
    i_num = i_cat = 0
    for ref in profile.features:
        if isinstance(ref, NumericReference):
            scores.append(score_numeric(ref, window.numeric_column(i_num), t))
            i_num += 1
        else:
            scores.append(score_categorical(ref, window.categorical_column(i_cat), t))
            i_cat += 1
    judged = [s for s in scores if s.verdict != INSUFFICIENT]
    drifted = sum(s.verdict == DRIFT for s in scores)
    share = drifted / len(judged) if judged else None
    prediction = None
    output = window.output_column()
    if profile.outputs is not None and output is not None:
        prediction = _score_any(profile.outputs, output, t)
    return DriftReport(
        profile_id=profile.profile_id,
        n=window.n,
        start_s=window.start_s,
        end_s=window.end_s,
        features=tuple(scores),
        dataset_drift=None if share is None else share >= t.dataset_drift_share,
        drift_share=share,
        n_drifted=drifted,
        prediction=prediction,
        thresholds=t,
    )
