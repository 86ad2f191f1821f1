"""Data-quality alert rules on real windows: NaN/inf rate, out-of-range rate, unseen
categories and dead (all-missing) features; the window v2 path end to end (encoded,
decoded as the hub does, merged, scored, judged)."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.core.drift import ReferenceProfile, WindowStats, score_window
from edgefleet.core.drift.wire import encode_window
from edgefleet.core.drift.wire_batch import decode_many
from edgefleet.core.protocol import WindowSummary
from edgefleet.hub.fleet.alerts import AlertPolicy, Observation, Signal, evaluate
from edgefleet.hub.fleet.totals import WindowTotals

H, M, L, N = Signal.HIGH, Signal.MID, Signal.LOW, Signal.NONE
QUALITY = ("nan_rate", "out_of_range_rate", "unseen_rate", "missing_feature")


@pytest.fixture(scope="module")
def profile() -> ReferenceProfile:
    rng = np.random.default_rng(8)
    X = np.column_stack([rng.normal(size=5000), rng.normal(size=5000), rng.choice(4, 5000)])
    return ReferenceProfile.build(
        X, ["temp", "load", "mode"], ["numeric", "numeric", "categorical"]
    )


def live(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.column_stack([rng.normal(size=n), rng.normal(size=n), rng.choice(4, n)])


def judge(profile: ReferenceProfile, X: np.ndarray, *, v1: bool = False) -> dict[str, Signal]:
    """Two device windows of half the rows each, through the hub's decoder, merged."""
    halves = []
    for part in np.array_split(X, 2):
        w = WindowStats.empty(profile)
        w.update(part)
        halves.append(encode_window(w, version=1) if v1 else w.to_bytes())
    decoded = decode_many(halves)
    assert all(d is not None for d in decoded)
    merged = WindowStats.merge_all([d for d in decoded if d is not None])
    totals = WindowTotals.of_window(WindowSummary("m", 1, 0.0, 60.0, len(X)))
    out = evaluate(Observation(score_window(profile, merged), totals), AlertPolicy())
    return {rule: out[rule].signal for rule in QUALITY}


def test_healthy_data_is_low_on_every_quality_rule(profile) -> None:
    assert judge(profile, live(np.random.default_rng(1), 1000)) == dict.fromkeys(QUALITY, L)


def test_a_fifth_of_nans_fires_the_nan_rule(profile) -> None:
    X = live(np.random.default_rng(2), 1000)
    X[::5, 1] = np.nan
    X[1::50, 1] = np.inf
    signals = judge(profile, X)
    assert signals["nan_rate"] is H and signals["missing_feature"] is L


def test_a_dead_sensor_fires_missing_feature(profile) -> None:
    X = live(np.random.default_rng(3), 1000)
    X[:, 0] = np.nan
    signals = judge(profile, X)
    assert signals["missing_feature"] is H and signals["nan_rate"] is H


def test_huge_sensor_values_are_clipped_counted_and_fire_out_of_range(profile) -> None:
    X = live(np.random.default_rng(4), 1000)
    X[::10, 0] = 1.79e308  # beyond float32, beyond squaring: once NaN statistics
    X[5::10, 0] = -1e200
    signals = judge(profile, X)
    assert signals["out_of_range_rate"] is H


def test_a_few_out_of_range_values_hold_mid(profile) -> None:
    X = live(np.random.default_rng(5), 1000)
    X[::50, 1] = 25.0  # 2 %: outside the reference range, inside the safe range
    assert judge(profile, X)["out_of_range_rate"] is M


def test_unseen_categories_fire_the_unseen_rule(profile) -> None:
    X = live(np.random.default_rng(6), 1000)
    X[::8, 2] = 9.0  # 12.5 % of a level the reference never had
    assert judge(profile, X)["unseen_rate"] is H


def test_v1_windows_are_judged_too(profile) -> None:
    X = live(np.random.default_rng(7), 1000)
    X[:, 1] = np.nan
    signals = judge(profile, X, v1=True)
    assert signals["missing_feature"] is H and signals["nan_rate"] is H


def test_too_few_rows_say_nothing(profile) -> None:
    X = live(np.random.default_rng(8), 60)
    X[:, 0] = np.nan
    assert judge(profile, X) == dict.fromkeys(QUALITY, N)


def test_quality_thresholds_are_validated() -> None:
    with pytest.raises(ValueError, match="nan_rate"):
        AlertPolicy(nan_rate=0.01, nan_rate_clear=0.05)
    with pytest.raises(ValueError, match="unseen_rate"):
        AlertPolicy(unseen_rate=float("nan"))
    with pytest.raises(ValueError, match="min_rows"):
        AlertPolicy(min_rows=0)
