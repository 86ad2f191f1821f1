"""Verdicts: false-alarm rate, detection power, minimum sizes, dataset and prediction drift."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgefleet.core.drift import (
    DriftThresholds,
    ReferenceProfile,
    WindowStats,
    score_window,
)
from edgefleet.core.errors import DriftError, ProfileMismatchError

# Distributions a model input can plausibly have; the reference and the
# windows are drawn from the same one.
GENERATORS = {
    "normal": lambda rng, n: rng.normal(5.0, 2.0, n),
    "lognormal": lambda rng, n: rng.lognormal(0.0, 1.0, n),
    "student_t3": lambda rng, n: rng.standard_t(3, n),
    "uniform": lambda rng, n: rng.random(n),
    "poisson": lambda rng, n: rng.poisson(3.0, n).astype(float),
    "binary": lambda rng, n: (rng.random(n) < 0.1).astype(float),
}
CATEGORY_P = np.r_[np.full(10, 0.08), np.full(20, 0.01)]


def draw(rng: np.random.Generator, n: int, shift_sd: dict[str, float] | None = None) -> np.ndarray:
    cols = []
    for name, gen in GENERATORS.items():
        x = gen(rng, n)
        if shift_sd and name in shift_sd:
            x = x + shift_sd[name] * REFERENCE_STD[name]
        cols.append(x)
    cols.append(rng.choice(30, size=n, p=CATEGORY_P).astype(float))
    return np.column_stack(cols)


_ref_rng = np.random.default_rng(2024)
REFERENCE = draw(_ref_rng, 20_000)
REFERENCE_STD = {name: float(REFERENCE[:, j].std()) for j, name in enumerate(GENERATORS)}
NAMES = [*GENERATORS, "category"]
KINDS = ["numeric"] * len(GENERATORS) + ["categorical"]


@pytest.fixture(scope="module")
def profile() -> ReferenceProfile:
    rng = np.random.default_rng(1)
    outputs = rng.choice(3, size=20_000, p=[0.5, 0.3, 0.2])
    return ReferenceProfile.build(REFERENCE, NAMES, KINDS, outputs=outputs, output_kind="class")


def _report(profile: ReferenceProfile, X: np.ndarray, y: np.ndarray | None = None):
    w = WindowStats.empty(profile)
    w.update(X)
    if y is not None:
        w.update_outputs(y)
    return score_window(profile, w)


def test_false_alarms_at_the_minimum_window_size(profile) -> None:
    rng = np.random.default_rng(77)
    n = DriftThresholds().min_n
    drifted = {name: 0 for name in NAMES}
    dataset = 0
    for _ in range(200):
        report = _report(profile, draw(rng, n))
        for f in report.features:
            assert f.verdict != "insufficient_data"
            drifted[f.name] += f.verdict == "drift"
        dataset += bool(report.dataset_drift)
    # At most 1 % of the 200 windows may declare drift, for every feature.
    assert all(count <= 2 for count in drifted.values()), drifted
    assert dataset == 0


@pytest.mark.parametrize("name", list(GENERATORS))
def test_half_sigma_mean_shift_is_detected_at_n_1000(profile, name) -> None:
    rng = np.random.default_rng(list(GENERATORS).index(name))
    report = _report(profile, draw(rng, 1000, {name: 0.5}))
    verdicts = {f.name: f.verdict for f in report.features}
    assert verdicts[name] == "drift"
    assert all(v == "no_drift" for k, v in verdicts.items() if k != name), verdicts


def test_binary_feature_drift_shows_as_a_changed_rate(profile) -> None:
    rng = np.random.default_rng(3)
    X = draw(rng, 1000)
    j = NAMES.index("binary")
    X[:, j] = (rng.random(1000) < 0.25).astype(float)  # rate 10 % -> 25 %
    assert _report(profile, X).feature("binary").verdict == "drift"


def test_below_minimum_size_is_insufficient_data_never_no_drift(profile) -> None:
    rng = np.random.default_rng(4)
    report = _report(profile, draw(rng, 299, {"normal": 3.0}))
    assert {f.verdict for f in report.features} == {"insufficient_data"}
    assert report.dataset_drift is None and report.drift_share is None
    f = report.feature("normal")
    assert f.psi is None and f.n == 299 and f.mean is not None


def test_wasserstein_needs_1000_values_and_sees_inside_the_outer_bins() -> None:
    rng = np.random.default_rng(5)
    profile = ReferenceProfile.build(rng.normal(size=(20_000, 1)), ["x"])
    last_edge = profile.features[0].edges[-1]  # type: ignore[union-attr]
    verdicts = {}
    for n in (999, 1000):
        x = rng.normal(size=(n, 1))
        x[x > last_edge] *= 5.0  # stretch the top 5 %: same bins, far larger values
        f = score_window(profile, _window(profile, x)).features[0]
        assert f.psi is not None and f.psi < 0.1  # bins barely move
        assert f.wasserstein is not None and f.wasserstein > 0.3
        verdicts[n] = f.verdict
    assert verdicts == {999: "no_drift", 1000: "drift"}


def _window(profile: ReferenceProfile, X: np.ndarray) -> WindowStats:
    w = WindowStats.empty(profile)
    w.update(X)
    return w


def test_small_windows_merged_over_time_reach_a_verdict(profile) -> None:
    rng = np.random.default_rng(6)
    windows = [_window(profile, draw(rng, 100, {"lognormal": 1.0})) for _ in range(4)]
    assert score_window(profile, windows[0]).feature("lognormal").verdict == "insufficient_data"
    merged = WindowStats.merge_all(windows)
    assert score_window(profile, merged).feature("lognormal").verdict == "drift"


def test_dataset_drift_by_share_of_drifted_features(profile) -> None:
    rng = np.random.default_rng(7)
    shifts = {"normal": 1.0, "lognormal": 1.0, "student_t3": 1.0, "uniform": 1.0}
    report = _report(profile, draw(rng, 2000, shifts))
    assert report.n_drifted == 4
    assert report.drift_share == pytest.approx(4 / 7)
    assert report.dataset_drift is True
    report = _report(profile, draw(rng, 2000, {"normal": 1.0}))
    assert report.n_drifted == 1 and report.dataset_drift is False


def test_categorical_drift_and_unseen_levels(profile) -> None:
    rng = np.random.default_rng(8)
    X = draw(rng, 1000)
    j = NAMES.index("category")
    X[:300, j] = 99.0  # 30 % of a level never seen in the reference
    f = _report(profile, X).feature("category")
    assert f.verdict == "drift" and f.unseen == 300
    assert f.chi2 is not None and f.chi2_pvalue is not None and f.chi2_pvalue < 1e-10
    assert f.wasserstein is None and f.ks is None


def test_prediction_drift_on_the_output_profile(profile) -> None:
    rng = np.random.default_rng(9)
    X = draw(rng, 1000)
    same = _report(profile, X, rng.choice(3, size=1000, p=[0.5, 0.3, 0.2]))
    assert same.prediction is not None and same.prediction.verdict == "no_drift"
    moved = _report(profile, X, rng.choice(3, size=1000, p=[0.2, 0.3, 0.5]))
    assert moved.prediction is not None and moved.prediction.verdict == "drift"
    assert _report(profile, X).prediction is not None  # outputs profiled, none seen yet
    assert _report(profile, X).prediction.verdict == "insufficient_data"  # type: ignore[union-attr]


def test_warn_between_psi_thresholds() -> None:
    rng = np.random.default_rng(10)
    profile = ReferenceProfile.build(rng.normal(size=(50_000, 1)), ["x"])
    f = score_window(profile, _window(profile, rng.normal(0.35, 1.0, size=(20_000, 1)))).features[0]
    assert f.psi is not None and 0.1 <= f.psi < 0.2
    assert f.js is not None and f.js >= 0.1  # JS alone is enough for "drift"
    assert f.verdict == "drift"
    loose = DriftThresholds(js_drift=0.5, wasserstein_drift=1.0)
    window = _window(profile, rng.normal(0.35, 1.0, size=(20_000, 1)))
    assert score_window(profile, window, loose).features[0].verdict == "warn"


def test_report_is_json_ready_and_matches_the_contract(profile) -> None:
    rng = np.random.default_rng(11)
    w = WindowStats.empty(profile, start_s=0.0, end_s=300.0)
    w.update(draw(rng, 500))
    w.update_outputs(rng.choice(3, size=500))
    d = score_window(profile, w).to_dict()
    json.dumps(d, allow_nan=False)
    assert set(d) >= {"features", "dataset_drift", "drift_share", "prediction"}
    for name in NAMES:
        assert set(d["features"][name]) >= {
            "psi",
            "js",
            "wasserstein",
            "ks",
            "ks_pvalue",
            "chi2",
            "verdict",
        }
    assert (d["start_s"], d["end_s"], d["n"]) == (0.0, 300.0, 500)


def test_scoring_against_another_profile_is_refused(profile) -> None:
    other = ReferenceProfile.build(np.random.default_rng(0).normal(size=(100, 1)), ["x"])
    with pytest.raises(ProfileMismatchError):
        score_window(other, WindowStats.empty(profile))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"psi_warn": 0.3, "psi_drift": 0.2},
        {"min_n": 0},
        {"min_n_wasserstein": 10},
        {"p_value": 1.5},
    ],
)
def test_thresholds_are_validated(kwargs) -> None:
    with pytest.raises(DriftError):
        DriftThresholds(**kwargs)


def test_thresholds_round_trip() -> None:
    t = DriftThresholds(psi_drift=0.25)
    assert DriftThresholds.from_dict(t.to_dict()) == t
