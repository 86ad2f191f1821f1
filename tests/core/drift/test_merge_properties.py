"""Merge algebra and the wire round trip, checked by hypothesis."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from edgefleet.core.drift import ReferenceProfile, WindowStats, coarsen
from edgefleet.core.errors import ProfileMismatchError

SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# Values from a realistic range, with the odd NaN/inf and repeated values.
_value = st.one_of(
    st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, allow_subnormal=False),
    st.sampled_from([0.0, 1.0, 2.0, 3.0, np.nan, np.inf, -np.inf]),
)


@st.composite
def batches(draw: st.DrawFn, max_rows: int = 40) -> np.ndarray:
    rows = draw(st.integers(0, max_rows))
    X = draw(arrays(np.float64, (rows, 4), elements=_value))
    # Column 2 is categorical: small integer codes (some unseen, some NaN).
    codes = draw(
        arrays(np.float64, rows, elements=st.sampled_from([0.0, 1.0, 2.0, 4.0, 9.0, np.nan]))
    )
    X[:, 2] = codes
    return X


@st.composite
def labels(draw: st.DrawFn, rows: int) -> np.ndarray:
    return np.array(draw(st.lists(st.sampled_from([0, 1, 2, 7]), min_size=rows, max_size=rows)))


def _window(profile: ReferenceProfile, X: np.ndarray, y: np.ndarray | None = None, t0=None):
    w = WindowStats.empty(profile, start_s=t0, end_s=None if t0 is None else t0 + 300.0)
    w.update(X)
    if y is not None:
        w.update_outputs(y)
    return w


def assert_equivalent(a: WindowStats, b: WindowStats, rel: float = 1e-9) -> None:
    """Counts exact; float statistics equal to ``rel`` (absolute floor for sums near 0)."""
    assert a.profile_id == b.profile_id and a.layout == b.layout
    assert (a.n, a.output_rows) == (b.n, b.output_rows)
    np.testing.assert_array_equal(a.ints, b.ints)
    np.testing.assert_array_equal(a.mins, b.mins)
    np.testing.assert_array_equal(a.maxs, b.maxs)
    scale = max(1.0, float(np.abs(a.adds).max(initial=0.0)))
    np.testing.assert_allclose(a.adds, b.adds, rtol=rel, atol=rel * scale)
    m2_scale = max(1.0, float(a.m2.max(initial=0.0)))
    np.testing.assert_allclose(a.m2, b.m2, rtol=rel, atol=rel * m2_scale)


@SETTINGS
@given(a=batches(), b=batches())
def test_merge_is_commutative(mixed_profile, a, b) -> None:
    wa, wb = _window(mixed_profile, a, t0=0.0), _window(mixed_profile, b, t0=300.0)
    assert wa.merge(wb).same_as(wb.merge(wa))  # bit for bit


@SETTINGS
@given(a=batches(), b=batches(), c=batches())
def test_merge_is_associative(mixed_profile, a, b, c) -> None:
    wa, wb, wc = (_window(mixed_profile, x) for x in (a, b, c))
    assert_equivalent(wa.merge(wb).merge(wc), wa.merge(wb.merge(wc)))


@SETTINGS
@given(
    data=batches(max_rows=120),
    cuts=st.lists(st.integers(0, 120), max_size=8),
    seed=st.integers(0, 2**32 - 1),
)
def test_merging_random_splits_equals_the_whole(mixed_profile, data, cuts, seed) -> None:
    rng = np.random.default_rng(seed)
    y = rng.choice([0, 1, 2, 7], size=data.shape[0])
    whole = _window(mixed_profile, data, y)
    order = rng.permutation(data.shape[0])  # splits need not be contiguous
    bounds = sorted({min(c, data.shape[0]) for c in cuts})
    parts = np.split(order, bounds)
    windows = [_window(mixed_profile, data[idx], y[idx]) for idx in parts]
    chained = windows[0]
    for w in windows[1:]:
        chained = chained.merge(w)
    assert_equivalent(chained, whole)
    assert_equivalent(WindowStats.merge_all(windows), whole)


@SETTINGS
@given(a=batches(), b=batches(), start=st.one_of(st.none(), st.floats(0, 2e9)))
def test_serialisation_round_trip_is_exact(mixed_profile, a, b, start) -> None:
    y = np.arange(a.shape[0]) % 3
    w = _window(mixed_profile, a, y, t0=start).merge(_window(mixed_profile, b))
    back = WindowStats.from_bytes(w.to_bytes())
    assert back.same_as(w)
    assert back.to_bytes() == w.to_bytes()
    # Merging decoded windows equals merging the originals, bit for bit.
    other = _window(mixed_profile, b)
    assert WindowStats.from_bytes(other.to_bytes()).merge(back).same_as(other.merge(w))


@settings(max_examples=30, deadline=None)
@given(
    x=arrays(
        np.float64,
        st.integers(2, 200),
        elements=st.floats(-1e6, 1e6, allow_nan=False, allow_subnormal=False),
    ),
    split=st.integers(1, 199),
)
def test_moments_match_a_two_pass_computation(normal_profile, x, split) -> None:
    split = min(split, x.size - 1)
    a, b = WindowStats.empty(normal_profile), WindowStats.empty(normal_profile)
    a.update(x[:split, None])
    b.update(x[split:, None])
    c = a.merge(b).numeric_column(0)
    m2 = float(((x - x.mean()) ** 2).sum())
    assert c.n == x.size
    assert math.isclose(c.mean or 0.0, x.mean(), rel_tol=1e-9, abs_tol=1e-9 * np.abs(x).max())
    assert math.isclose(c.m2, m2, rel_tol=1e-9, abs_tol=1e-12 * float((x * x).sum()) + 1e-12)


def test_merging_windows_of_different_profiles_is_refused(mixed_profile, normal_profile) -> None:
    a = WindowStats.empty(mixed_profile)
    b = WindowStats.empty(normal_profile)
    with pytest.raises(ProfileMismatchError, match="profiles"):
        a.merge(b)
    with pytest.raises(ProfileMismatchError):
        WindowStats.merge_all([a, a, b])


def test_merge_keeps_inputs_unchanged_and_spans_time(mixed_profile, make_mixed) -> None:
    rng = np.random.default_rng(5)
    a = _window(mixed_profile, make_mixed(rng, 50), t0=600.0)
    b = _window(mixed_profile, make_mixed(rng, 70), t0=0.0)
    a0, b0 = a.copy(), b.copy()
    m = a.merge(b)
    assert a.same_as(a0) and b.same_as(b0)
    assert (m.start_s, m.end_s, m.n) == (0.0, 900.0, 120)


def test_coarsen_merges_consecutive_windows_exactly(mixed_profile, make_mixed) -> None:
    rng = np.random.default_rng(6)
    windows = [_window(mixed_profile, make_mixed(rng, 40), t0=300.0 * i) for i in range(7)]
    shuffled = [windows[i] for i in (3, 0, 6, 1, 5, 2, 4)]
    coarse = coarsen(shuffled, 3)
    assert [(w.start_s, w.end_s) for w in coarse] == [
        (0.0, 900.0),
        (900.0, 1800.0),
        (1800.0, 2100.0),
    ]
    assert [w.n for w in coarse] == [120, 120, 40]
    assert_equivalent(WindowStats.merge_all(coarse), WindowStats.merge_all(windows), rel=1e-12)
