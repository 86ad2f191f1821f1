"""Drift scores computed from binned counts (and per-bin sums) alone.

All functions take the reference and the current window on the *same* bins.
Proportions are ``p_i = r_i / sum(r)`` (reference) and ``q_i = c_i / sum(c)``
(window); natural logarithms throughout.

PSI (population stability index)::

    PSI = sum_i (p_i - q_i) * ln(p_i / q_i)

Empty bins are filled as Evidently does (``get_binned_data``): in each of
``p`` and ``q`` separately, zeros become ``min(nonzero) / 1e6`` when that
minimum is <= 1e-4, else ``1e-4``; the filled vectors are not renormalised.
(B. Yurdakul, "Statistical properties of population stability index", 2018.)

Jensen-Shannon distance (the square root of the divergence, in nats, so it
lies in ``[0, sqrt(ln 2)]``)::

    m  = (p + q) / 2
    JS = sqrt( (KL(p || m) + KL(q || m)) / 2 ),   KL(a || b) = sum_i a_i ln(a_i / b_i)

with ``0 ln 0 = 0`` (no filling needed); identical to
``scipy.spatial.distance.jensenshannon(p, q)``. (J. Lin, IEEE Trans. Inf.
Theory 37(1) 1991.)

Wasserstein-1 from bin centroids: each side is the discrete distribution
putting mass ``p_i`` on its own centroid ``sum_i / count_i`` of bin ``i``;
``W1 = integral |F_ref(x) - F_cur(x)| dx`` between the two step CDFs, divided
by ``max(reference std, 0.001)`` as Evidently's ``wasserstein`` test does.
Binning moves every value to its bin's centroid, so the result approximates the
raw-data distance (within ~0.02 for 20 quantile bins on normal data).

Binned Kolmogorov-Smirnov: ``D = max_i |P_i - Q_i|`` over the cumulative
proportions at the interior bin edges. Because the ECDFs are only compared at
the edges, ``D`` never exceeds the raw two-sample statistic; the p-value uses
the asymptotic Kolmogorov distribution (:func:`~.distributions.ks_pvalue`),
which is conservative for binned data.

Mean shift: Welch's two-sample z statistic on the means,
``z = (mean_w - mean_r) / sqrt(var_w / n_w + var_r / n_r)``, two-sided normal
p-value ``erfc(|z| / sqrt 2)`` (large-sample form of Welch's t test; B. L.
Welch, Biometrika 34 (1947)).

Variance ratio: ``ratio = var_w / var_r`` from the moments already on the wire (M2 and
``n``), tested on its logarithm, whose large-sample variance is ``(kappa - 1) / n``
(delta method; ``kappa`` the kurtosis), so
``z = ln(ratio) / sqrt((kappa - 1) (1 / n_w + 1 / n_r))``, two-sided normal p-value.
Only binned sums are on the wire, not fourth moments: ``kappa`` is taken from the bin
centroids of each side (exact for tied values, low for values spread inside a bin) plus
the fourth powers of the observed minimum and maximum (the heavy tails the centroids
hide), the larger of the two sides and never below 3 (the normal value), so the test
errs towards silence on heavy tails. This is what sees a pure change of spread on a feature that is
mostly ties (>= 84 % zeros), which moves neither the binned KS statistic nor the mean.
(Box, Biometrika 40 (1953) on the kurtosis dependence of variance tests.)

Chi-square test of homogeneity on the ``2 x B`` table (reference counts,
window counts) after pooling buckets whose expected window count is below 5
(Cochran's rule) into one::

    chi2 = sum_{rows, cols} (O - E)**2 / E,  E = row_total * col_total / total,
    dof  = (#cols - 1)

>>> round(psi([50, 50], [40, 60]), 6)
0.040547
>>> abs(js_distance([1, 0], [0, 1]) ** 2 - math.log(2)) < 1e-12
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from edgefleet.core.drift.distributions import chi2_sf, ks_pvalue

ArrayLike = Sequence[float] | np.ndarray


def _proportions(counts: ArrayLike) -> np.ndarray:
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum()
    if total <= 0:
        raise ValueError("no observations")
    return c / total


def evidently_fill(p: np.ndarray) -> np.ndarray:
    """Replace zeros like Evidently's ``get_binned_data(feel_zeroes=True)``."""
    nonzero = p[p != 0]
    if nonzero.size == 0:
        return p.copy()
    smallest = float(nonzero.min())
    fill = smallest / 1e6 if smallest <= 1e-4 else 1e-4
    return np.where(p == 0, fill, p)


def psi(reference_counts: ArrayLike, window_counts: ArrayLike) -> float:
    """Population stability index with Evidently's zero handling."""
    p = evidently_fill(_proportions(reference_counts))
    q = evidently_fill(_proportions(window_counts))
    return float(np.sum((p - q) * np.log(p / q)))


def _kl_terms(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.zeros_like(a)
    pos = a > 0
    out[pos] = a[pos] * np.log(a[pos] / b[pos])
    return out


def js_distance(reference_counts: ArrayLike, window_counts: ArrayLike) -> float:
    """Jensen-Shannon distance (natural log)."""
    p = _proportions(reference_counts)
    q = _proportions(window_counts)
    m = (p + q) / 2.0
    js = np.sum(_kl_terms(p, m) + _kl_terms(q, m)) / 2.0
    return float(np.sqrt(max(js, 0.0)))


def _centroids(counts: np.ndarray, sums: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = counts > 0
    return sums[keep] / counts[keep], counts[keep] / counts.sum()


def wasserstein_centroids(
    reference_counts: ArrayLike,
    reference_sums: ArrayLike,
    window_counts: ArrayLike,
    window_sums: ArrayLike,
    reference_std: float,
) -> float:
    """W1 between the two centroid distributions, over ``max(reference_std, 0.001)``."""
    rc = np.asarray(reference_counts, dtype=np.float64)
    wc = np.asarray(window_counts, dtype=np.float64)
    if rc.sum() <= 0 or wc.sum() <= 0:
        raise ValueError("no observations")
    a, u = _centroids(rc, np.asarray(reference_sums, dtype=np.float64))
    b, v = _centroids(wc, np.asarray(window_sums, dtype=np.float64))
    points = np.concatenate([a, b])
    order = np.argsort(points, kind="stable")
    points = points[order]
    mass = np.concatenate([u, -v])[order]
    cdf_gap = np.cumsum(mass)[:-1]
    distance = float(np.sum(np.abs(cdf_gap) * np.diff(points)))
    return distance / max(reference_std, 0.001)


def ks_binned(reference_counts: ArrayLike, window_counts: ArrayLike) -> tuple[float, float]:
    """Binned two-sample KS statistic ``D`` and its asymptotic p-value."""
    r = np.asarray(reference_counts, dtype=np.float64)
    c = np.asarray(window_counts, dtype=np.float64)
    p_cum = np.cumsum(_proportions(r))[:-1]
    q_cum = np.cumsum(_proportions(c))[:-1]
    d = float(np.max(np.abs(p_cum - q_cum))) if p_cum.size else 0.0
    return d, ks_pvalue(d, int(r.sum()), int(c.sum()))


def mean_shift_pvalue(
    n_ref: int, mean_ref: float, std_ref: float, n_win: int, mean_win: float, std_win: float
) -> float:
    """Two-sided large-sample p-value for ``mean_win != mean_ref`` (Welch z)."""
    if n_ref <= 0 or n_win <= 0:
        return 1.0
    se = math.sqrt(std_win * std_win / n_win + std_ref * std_ref / n_ref)
    gap = abs(mean_win - mean_ref)
    if se == 0.0:
        return 1.0 if gap == 0.0 else 0.0
    return math.erfc(gap / se / math.sqrt(2.0))


def binned_kurtosis(
    counts: ArrayLike, sums: ArrayLike, mean: float, std: float, lo: float, hi: float
) -> float:
    """Kurtosis estimate from bin centroids plus the two observed extremes.

    Centroids hide the spread inside a bin, most of all inside the open outer bins
    where heavy tails live; the minimum and maximum are real observations, so their
    fourth powers are added on top (an overestimate by at most two values' worth,
    which makes the variance test quieter, never louder).
    """
    c = np.asarray(counts, dtype=np.float64)
    keep = c > 0
    total = c.sum()
    if total <= 0 or std <= 0:
        return 3.0
    centroids = np.asarray(sums, dtype=np.float64)[keep] / c[keep]
    # In units of std: no deviation exceeds sqrt(n) of them, so no power overflows.
    z = (centroids - mean) / std
    m4 = float(np.sum(c[keep] * z**4))
    m4 += ((hi - mean) / std) ** 4 + ((lo - mean) / std) ** 4
    return m4 / total


def variance_ratio_pvalue(
    n_ref: int, std_ref: float, kurtosis_ref: float, n_win: int, std_win: float, kurtosis_win: float
) -> tuple[float | None, float]:
    """``var_win / var_ref`` and the two-sided p-value of ``ratio != 1`` (see module doc)."""
    if n_ref < 2 or n_win < 2 or std_ref <= 0.0:
        return None, 1.0
    ratio = (std_win / std_ref) ** 2
    kappa = max(kurtosis_ref, kurtosis_win, 3.0)
    se = math.sqrt((kappa - 1.0) * (1.0 / n_win + 1.0 / n_ref))
    if ratio <= 0.0:
        return ratio, 0.0
    return ratio, math.erfc(abs(math.log(ratio)) / se / math.sqrt(2.0))


def chi2_homogeneity(
    reference_counts: ArrayLike, window_counts: ArrayLike, min_expected: float = 5.0
) -> tuple[float, float, int]:
    """Chi-square homogeneity statistic, p-value and degrees of freedom.

    Buckets whose expected window count ``n * r_i / N`` is below
    ``min_expected`` are pooled into one column before testing.
    """
    r = np.asarray(reference_counts, dtype=np.float64)
    c = np.asarray(window_counts, dtype=np.float64)
    n_ref, n_win = r.sum(), c.sum()
    if n_ref <= 0 or n_win <= 0:
        raise ValueError("no observations")
    small = n_win * r / n_ref < min_expected
    if small.any():
        r = np.append(r[~small], r[small].sum())
        c = np.append(c[~small], c[small].sum())
    used = (r + c) > 0
    r, c = r[used], c[used]
    if r.size < 2:
        return 0.0, 1.0, 0
    total = n_ref + n_win
    col = r + c
    e_ref = col * n_ref / total
    e_win = col * n_win / total
    stat = float(np.sum((r - e_ref) ** 2 / e_ref) + np.sum((c - e_win) ** 2 / e_win))
    dof = int(r.size - 1)
    return stat, chi2_sf(stat, dof), dof
