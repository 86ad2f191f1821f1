"""Device windows pooled by the evidence rule: exact within the cap, robust beyond it."""

from __future__ import annotations

import numpy as np
import pytest
from tests.core.drift.conftest import MIXED_KINDS, MIXED_NAMES, mixed_data

from edgefleet.core.drift import ReferenceProfile, WindowStats, score_window
from edgefleet.core.drift.pooling import needs_pooling, pool_devices
from edgefleet.core.evidence import EvidenceRule, pooled_share_columns, robust_mean, robust_means


def window(profile: ReferenceProfile, X: np.ndarray, labels: np.ndarray) -> WindowStats:
    w = WindowStats.empty(profile)
    w.update(X)
    w.update_outputs(labels)
    return w


def honest(profile: ReferenceProfile, rng: np.random.Generator, n: int) -> WindowStats:
    return window(profile, mixed_data(rng, n), rng.integers(0, 3, n))


def drifted(profile: ReferenceProfile, rng: np.random.Generator, n: int) -> WindowStats:
    X = mixed_data(rng, n)
    X[:, 0] += 8.0  # four standard deviations
    X[:, 3] *= 6.0
    X[:, 2] = 4.0  # a rare colour only
    return window(profile, X, np.full(n, 2))


def assert_invariants(w: WindowStats) -> None:
    lay = w.layout
    for j in range(lay.k_num):
        c = w.numeric_column(j)
        rows = w.output_rows if (lay.output == "numeric" and j == lay.k_num - 1) else w.rows
        assert c.n == int(c.counts.sum()) and c.n + c.nan + c.inf == rows
        assert c.below <= c.counts[0] and c.above <= c.counts[-1] and c.clipped <= c.n
    for j in range(lay.k_cat):
        c = w.categorical_column(j)
        rows = w.output_rows if (lay.output == "categorical" and j == lay.k_cat - 1) else w.rows
        assert c.n + c.nan == rows
    assert WindowStats.from_bytes(w.to_bytes()).same_as(w)


def test_within_the_cap_the_pool_is_the_exact_merge(mixed_profile: ReferenceProfile) -> None:
    rng = np.random.default_rng(1)
    devices = [honest(mixed_profile, rng, n) for n in (900, 1000, 1100, 1000, 950)]
    assert not needs_pooling(devices, EvidenceRule())
    assert pool_devices(devices).same_as(WindowStats.merge_all(devices))
    # One device alone, or a device the cap does not bind: still exact.
    assert pool_devices(devices[:1]).same_as(devices[0])


def test_one_huge_drifted_device_does_not_make_the_scope_drift(
    mixed_profile: ReferenceProfile,
) -> None:
    rng = np.random.default_rng(2)
    good = [honest(mixed_profile, rng, 1000) for _ in range(4)]
    liar = drifted(mixed_profile, rng, 200_000)
    exact = score_window(mixed_profile, WindowStats.merge_all([*good, liar]))
    assert exact.dataset_drift  # the old merge: the liar decides
    pooled = pool_devices([*good, liar])
    assert_invariants(pooled)
    report = score_window(mixed_profile, pooled)
    assert report.n_drifted == 0 and not report.dataset_drift
    assert report.prediction is not None and report.prediction.verdict != "drift"
    assert pooled.n <= 4000 * 4 / 3 + 1  # the liar adds at most its share of rows
    assert score_window(mixed_profile, liar).dataset_drift  # its own view still shows it


def test_one_huge_quiet_device_does_not_hide_the_drift_of_the_others(
    mixed_profile: ReferenceProfile,
) -> None:
    rng = np.random.default_rng(3)
    bad = [drifted(mixed_profile, rng, 1000) for _ in range(4)]
    quiet = honest(mixed_profile, rng, 200_000)
    exact = score_window(mixed_profile, WindowStats.merge_all([*bad, quiet]))
    assert not exact.dataset_drift  # the old merge: the quiet device hides it
    pooled = pool_devices([*bad, quiet])
    assert_invariants(pooled)
    report = score_window(mixed_profile, pooled)
    assert report.dataset_drift
    assert report.prediction is not None and report.prediction.verdict == "drift"


def test_pooled_numbers_stay_within_their_bins(mixed_profile: ReferenceProfile) -> None:
    rng = np.random.default_rng(4)
    devices = [honest(mixed_profile, rng, n) for n in (50, 60, 70, 5000)]
    devices.append(window(mixed_profile, np.full((3, 4), np.nan), rng.integers(0, 3, 3)))
    pooled = pool_devices(devices)
    assert_invariants(pooled)
    col = pooled.numeric_column(0)
    edges_ok = col.mean is not None and 5.0 < col.mean < 15.0
    assert edges_ok and col.std is not None and 1.0 < col.std < 3.0
    assert col.nan == 0  # three NaN rows are below min_device_requests: not contributing


def test_vectorised_rule_equals_the_scalar_rule() -> None:
    rng = np.random.default_rng(5)
    rule = EvidenceRule()
    for m in (1, 2, 3, 5, 9, 40):
        values = rng.random((m, 7))
        values[:, 0] = 0.5  # ties broken by weight, as the scalar rule sorts
        weights = rng.integers(1, 10**6, m).astype(float)
        weights[0] = 10**12
        got = robust_means(values, weights, rule)
        for col in range(7):
            want = robust_mean(list(zip(values[:, col], weights, strict=True)), rule)
            assert got[col] == pytest.approx(want, rel=1e-12)
        # Per-column weights, 0 marking a device absent from that column.
        per_column = rng.integers(0, 4, (m, 7)).astype(float) * rng.integers(1, 10**6, (m, 7))
        got = robust_means(values, per_column, rule)
        for col in range(7):
            pairs = [(v, w) for v, w in zip(values[:, col], per_column[:, col], strict=True)]
            want = robust_mean(pairs, rule)
            assert (np.isnan(got[col]) and want is None) or got[col] == pytest.approx(want)


def test_shares_of_devices_that_all_disagree_are_not_empty() -> None:
    counts = np.array([[10, 0, 0], [0, 10, 0], [0, 0, 10]])
    assert pooled_share_columns(counts, EvidenceRule()) == pytest.approx([1 / 3] * 3)


def test_unrelated_profiles_do_not_pool(mixed_profile: ReferenceProfile) -> None:
    other = ReferenceProfile.build(
        mixed_data(np.random.default_rng(6), 500), MIXED_NAMES, MIXED_KINDS
    )
    rng = np.random.default_rng(7)
    a = honest(mixed_profile, rng, 100)
    b = WindowStats.empty(other)
    b.update(mixed_data(rng, 100))
    with pytest.raises(Exception, match="profile"):
        pool_devices([a, b])
