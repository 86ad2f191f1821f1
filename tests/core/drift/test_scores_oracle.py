"""Scores against independent computations (numpy by hand, scipy as the oracle)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special, stats
from scipy.spatial import distance

from edgefleet.core.drift import NumericReference, ReferenceProfile, WindowStats
from edgefleet.core.drift.distributions import chi2_sf, gammaincc, kolmogorov_sf, ks_pvalue
from edgefleet.core.drift.scores import (
    chi2_homogeneity,
    js_distance,
    ks_binned,
    mean_shift_pvalue,
    psi,
    wasserstein_centroids,
)

counts_pairs = st.integers(2, 30).flatmap(
    lambda k: st.tuples(
        st.lists(st.integers(0, 5000), min_size=k, max_size=k).filter(lambda c: sum(c) > 0),
        st.lists(st.integers(0, 5000), min_size=k, max_size=k).filter(lambda c: sum(c) > 0),
    )
)


def evidently_psi(ref_counts: list[int], cur_counts: list[int]) -> float:
    """Evidently's get_binned_data(feel_zeroes=True) + psi, written out by hand."""
    ref = np.array(ref_counts, dtype=float) / sum(ref_counts)
    cur = np.array(cur_counts, dtype=float) / sum(cur_counts)
    for arr in (ref, cur):
        smallest = min(arr[arr != 0])
        np.place(arr, arr == 0, smallest / 10**6 if smallest <= 0.0001 else 0.0001)
    total = 0.0
    for r, c in zip(ref, cur, strict=True):
        total += (r - c) * np.log(r / c)
    return float(total)


@settings(max_examples=80, deadline=None)
@given(counts_pairs)
def test_psi_equals_evidently_formula(pair) -> None:
    ref, cur = pair
    assert psi(ref, cur) == pytest.approx(evidently_psi(ref, cur), rel=1e-12, abs=1e-12)


def test_psi_zero_fill_rule_matches_evidently_thresholds() -> None:
    # min nonzero share 0.5 > 1e-4: fill 1e-4; min share 1e-5 <= 1e-4: fill 1e-5 / 1e6.
    assert psi([1, 1, 0], [1, 1, 1]) == pytest.approx(
        evidently_psi([1, 1, 0], [1, 1, 1]), rel=1e-12
    )
    big = [100_000, 0, 1]
    assert psi(big, [5, 5, 5]) == pytest.approx(evidently_psi(big, [5, 5, 5]), rel=1e-12)
    assert psi([10, 20, 30], [10, 20, 30]) == 0.0


@settings(max_examples=80, deadline=None)
@given(counts_pairs)
def test_js_distance_equals_scipy_natural_log(pair) -> None:
    ref, cur = pair
    expected = distance.jensenshannon(np.array(ref, float), np.array(cur, float))
    assert js_distance(ref, cur) == pytest.approx(expected, rel=1e-12, abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    shift=st.floats(-1.0, 1.0),
    scale=st.floats(0.5, 2.0),
    n=st.integers(50, 3000),
    seed=st.integers(0, 2**32 - 1),
)
def test_binned_ks_never_exceeds_raw_ks(normal_profile, shift, scale, n, seed) -> None:
    rng = np.random.default_rng(seed)
    ref_raw = np.random.default_rng(7).normal(size=(20_000, 1))[:, 0]  # the profile's data
    cur = rng.normal(shift, scale, size=n)
    w = WindowStats.empty(normal_profile)
    w.update(cur[:, None])
    f = normal_profile.features[0]
    d, p = ks_binned(f.counts, w.numeric_column(0).counts)  # type: ignore[union-attr]
    raw = stats.ks_2samp(ref_raw, cur)
    assert d <= raw.statistic + 1e-12
    assert 0.0 <= p <= 1.0


@pytest.mark.parametrize(
    ("shift", "scale", "n"),
    [
        (0.0, 1.0, 1000),
        (0.25, 1.0, 1000),
        (0.5, 1.0, 1000),
        (1.0, 1.0, 2000),
        (0.0, 1.5, 1000),
        (0.0, 0.5, 1000),
        (2.0, 1.0, 5000),
        (0.5, 2.0, 5000),
    ],
)
def test_wasserstein_from_centroids_is_within_002_of_scipy(shift, scale, n) -> None:
    rng = np.random.default_rng(int(n + 100 * shift + 10 * scale))
    ref = rng.normal(size=20_000)
    profile = ReferenceProfile.build(ref[:, None], ["x"], n_bins=20)
    f = profile.features[0]
    assert isinstance(f, NumericReference)
    cur = rng.normal(shift, scale, size=n)
    w = WindowStats.empty(profile)
    w.update(cur[:, None])
    c = w.numeric_column(0)
    ours = wasserstein_centroids(f.counts, f.sums, c.counts, c.sums, f.std)
    exact = stats.wasserstein_distance(ref, cur) / ref.std()
    assert abs(ours - exact) <= 0.02, (ours, exact)


def test_wasserstein_of_identical_histograms_is_zero() -> None:
    assert wasserstein_centroids([1, 2, 3], [1.0, 5.0, 9.0], [1, 2, 3], [1.0, 5.0, 9.0], 1.0) == 0.0


@pytest.mark.parametrize("lam", [0.05, 0.2, 0.5, 0.8, 0.99, 1.0, 1.01, 1.36, 2.0, 3.0, 6.0])
def test_kolmogorov_series_matches_scipy(lam) -> None:
    assert kolmogorov_sf(lam) == pytest.approx(special.kolmogorov(lam), rel=1e-10, abs=1e-15)


def test_ks_pvalue_is_close_to_scipy_asymptotic() -> None:
    # Stephens' corrected asymptotic form vs scipy's exact-n one-sample-equivalent.
    for d, n1, n2 in [(0.05, 1000, 20000), (0.1, 300, 5000), (0.2, 100, 100)]:
        ours = ks_pvalue(d, n1, n2)
        en = n1 * n2 / (n1 + n2)
        assert ours == pytest.approx(stats.kstwo.sf(d, round(en)), rel=0.1, abs=1e-3)


@pytest.mark.parametrize("dof", [1, 2, 3, 5, 19, 63, 200])
def test_chi2_sf_matches_scipy(dof) -> None:
    for x in [0.0, 0.01, 0.5, dof * 0.5, dof, dof + 1.0, 2.0 * dof, 3.0 * dof + 30, 500.0]:
        assert chi2_sf(x, dof) == pytest.approx(stats.chi2.sf(x, dof), rel=1e-9, abs=1e-300)


@pytest.mark.parametrize("a", [0.5, 1.0, 2.5, 10.0, 100.0])
def test_gammaincc_matches_scipy(a) -> None:
    for x in [1e-3, 0.5, a - 0.5 if a > 0.5 else 0.1, a + 1.0, 2 * a + 5, 10 * a + 50]:
        assert gammaincc(a, x) == pytest.approx(special.gammaincc(a, x), rel=1e-9, abs=1e-300)


@settings(max_examples=60, deadline=None)
@given(counts_pairs)
def test_chi2_homogeneity_matches_scipy_contingency(pair) -> None:
    ref, cur = pair
    table = np.array([ref, cur], dtype=float)
    table = table[:, table.sum(axis=0) > 0]
    n_cur, n_ref = sum(cur), sum(ref)
    expected_cur = n_cur * np.array(ref, float) / n_ref
    if (expected_cur < 5).any() or table.shape[1] < 2:
        return  # pooling applies: compared in the next test
    stat, p, dof = chi2_homogeneity(ref, cur)
    chi2, p_scipy, dof_scipy, _ = stats.chi2_contingency(table, correction=False)
    assert stat == pytest.approx(chi2, rel=1e-10)
    assert p == pytest.approx(p_scipy, rel=1e-8, abs=1e-300)
    assert dof == dof_scipy


def test_chi2_pools_sparse_buckets_before_testing() -> None:
    ref, cur = [500, 400, 98, 2, 0], [50, 40, 8, 1, 1]  # last two have expected < 5
    stat, p, dof = chi2_homogeneity(ref, cur)
    pooled = np.array([[500, 400, 98, 2], [50, 40, 8, 2]], dtype=float)
    chi2, p_scipy, dof_scipy, _ = stats.chi2_contingency(pooled, correction=False)
    assert (stat, dof) == (pytest.approx(chi2, rel=1e-10), dof_scipy)
    assert p == pytest.approx(p_scipy, rel=1e-8)


def test_mean_shift_pvalue_matches_two_sided_normal() -> None:
    p = mean_shift_pvalue(10_000, 0.0, 1.0, 400, 0.1, 1.0)
    z = 0.1 / math.sqrt(1 / 400 + 1 / 10_000)
    assert p == pytest.approx(2 * stats.norm.sf(z), rel=1e-9)
    assert mean_shift_pvalue(10, 1.0, 0.0, 10, 1.0, 0.0) == 1.0
