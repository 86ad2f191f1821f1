"""Drift window v2: windows stay finite whatever the sensors send, the counts the alert
rules need travel on the wire, string categories count unseen levels, v1 is still read."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgefleet.core.drift import ReferenceProfile, WindowStats, score_window
from edgefleet.core.drift.limits import SAFE_ABS
from edgefleet.core.drift.wire import VERSION, encode_window
from edgefleet.core.drift.wire_batch import decode_many
from edgefleet.core.errors import DriftError

HUGE = 1.79e308  # just below the float64 maximum


@pytest.fixture(scope="module")
def profile() -> ReferenceProfile:
    rng = np.random.default_rng(3)
    return ReferenceProfile.build(rng.normal(size=(5000, 3)), ["a", "b", "c"])


def _finite(w: WindowStats) -> bool:
    return all(np.isfinite(a).all() for a in (w.adds, w.m2)) and all(
        math.isfinite(v) for j in range(w.layout.k_num) for v in (w.mins[j], w.maxs[j])
    )


def test_huge_values_are_clipped_and_counted_never_summed_into_inf(profile) -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(400, 3))
    X[0, 0] = 1.3e154 * 2  # squares to inf
    X[1, 0], X[2, 0] = HUGE, -HUGE  # sum to inf
    X[3, 1] = np.inf
    X[4:84, 2] = np.nan  # 20 % missing
    w = WindowStats.empty(profile)
    w.update(X)
    col = w.numeric_column(0)
    assert col.clipped == 3 and col.above == 2 and col.below == 1
    assert col.max == SAFE_ABS and col.min == -SAFE_ABS
    assert w.numeric_column(1).inf == 1 and w.numeric_column(2).nan == 80
    assert _finite(w)
    data = w.to_bytes()
    assert data[4] == VERSION == 2
    back = WindowStats.from_bytes(data)
    assert back.same_as(w) and back.numeric_column(0).clipped == 3
    assert decode_many([data])[0] is not None
    merged = WindowStats.merge_all([back, back, w])
    assert _finite(merged) and merged.numeric_column(0).clipped == 9
    report = score_window(profile, merged).to_dict()
    assert report["features"]["a"]["clipped"] == 9
    assert report["features"]["c"]["nan"] == 240


def test_v1_windows_are_still_read_with_zero_clipped(profile) -> None:
    rng = np.random.default_rng(2)
    w = WindowStats.empty(profile, start_s=0.0, end_s=60.0)
    w.update(rng.normal(size=(100, 3)))
    v1 = encode_window(w, version=1)
    assert v1[4] == 1 and len(v1) == len(w.to_bytes()) - 1  # v2 adds one width byte here
    for decoded in (WindowStats.from_bytes(v1), decode_many([v1, w.to_bytes()])[0]):
        assert decoded is not None and decoded.same_as(w)
        assert decoded.numeric_column(0).clipped == 0
    both = decode_many([v1, w.to_bytes(), v1])
    assert all(d is not None and d.same_as(w) for d in both)


def test_v1_cannot_carry_clipped_values(profile) -> None:
    w = WindowStats.empty(profile)
    w.update(np.array([[1e200, 0.0, 0.0]]))
    with pytest.raises(DriftError, match="version 2"):
        encode_window(w, version=1)


def _forged(profile: ReferenceProfile, where: str, value: float, version: int) -> bytes:
    """A window whose statistic ``where`` of column 0 says ``value`` (what a device that
    does not clip, or lies, would send)."""
    w = WindowStats.empty(profile)
    w.update(np.array([[0.5, 0.25, 0.125], [0.75, 0.5, 0.25]]))
    if where == "sum":
        bin_of_max = int(np.flatnonzero(w.ints[w.layout.bin_range(0)])[-1])
        w.adds[w.layout.bin_range(0).start + bin_of_max] = value
    else:
        getattr(w, where)[0] = value
    return encode_window(w, version=version)


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize(
    ("where", "value"),
    [("maxs", np.inf), ("mins", -np.inf), ("maxs", 1e200), ("m2", 1e300), ("sum", -1e250)],
)
def test_statistics_beyond_the_safe_range_are_refused_in_both_versions(
    profile, version, where, value
) -> None:
    data = _forged(profile, where, value, version)
    with pytest.raises(DriftError, match="malformed window"):
        WindowStats.from_bytes(data)
    assert decode_many([data]) == [None]


def test_more_clipped_than_values_is_refused(profile) -> None:
    w = WindowStats.empty(profile)
    w.update(np.array([[1e200, 0.0, 0.0]]))
    w.ints[w.layout.clipped.start + 1] = 2  # column b saw one value
    data = w.to_bytes()
    with pytest.raises(DriftError, match="do not add up"):
        WindowStats.from_bytes(data)
    assert decode_many([data]) == [None]


def test_string_categories_count_unseen_levels_and_missing() -> None:
    rng = np.random.default_rng(4)
    n = 2000
    X = np.empty((n, 2), dtype=object)
    X[:, 0] = rng.normal(size=n)
    X[:, 1] = rng.choice(["red", "green", "blue"], size=n, p=[0.5, 0.3, 0.2])
    profile = ReferenceProfile.build(X, ["x", "color"], ["numeric", "categorical"])
    live = np.empty((400, 2), dtype=object)
    live[:, 0] = rng.normal(size=400)
    live[:, 1] = rng.choice(["red", "green", "blue", "purple"], size=400)
    live[:40, 1] = None
    w = WindowStats.empty(profile)
    w.update(live)
    col = w.categorical_column(0)
    purple = int(np.sum(live[40:, 1] == "purple"))
    assert col.nan == 40 and int(col.counts[-1]) == purple > 0
    back = WindowStats.from_bytes(w.to_bytes())
    assert back.same_as(w)
    score = score_window(profile, back).feature("color")
    assert score.unseen == purple and score.nan == 40


def test_a_numeric_column_of_strings_is_a_drift_error(profile) -> None:
    w = WindowStats.empty(profile)
    with pytest.raises(DriftError, match="numbers"):
        w.update(np.array([["x", 1.0, 2.0]], dtype=object))
