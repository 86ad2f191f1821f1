"""The variance-ratio test: a change of spread on a feature that is mostly ties is caught,
and false alarms stay at zero on the usual distributions (statistical, fixed seeds)."""

from __future__ import annotations

import numpy as np
import pytest
from tests.core.drift.test_decisions import GENERATORS as BASE_GENERATORS

from edgefleet.core.drift import ReferenceProfile, WindowStats, score_window
from edgefleet.core.drift.scores import variance_ratio_pvalue


def tied(rng: np.random.Generator, n: int, scale: float = 1.0) -> np.ndarray:
    """86 % zeros, the rest normal around zero: a spread change moves neither KS nor mean."""
    return np.where(rng.random(n) < 0.86, 0.0, scale * rng.normal(0.0, 1.0, n))


def tied_positive(rng: np.random.Generator, n: int, scale: float = 1.0) -> np.ndarray:
    """84 % zeros, the rest exponential (a sensor idle most of the time)."""
    return np.where(rng.random(n) < 0.84, 0.0, rng.exponential(scale, n))


# The distributions of the other statistical tests, plus the two tied ones.
GENERATORS = {**BASE_GENERATORS, "tied": tied, "tied_positive": tied_positive}
NAMES = list(GENERATORS)


def draw(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.column_stack([gen(rng, n) for gen in GENERATORS.values()])


@pytest.fixture(scope="module")
def profile() -> ReferenceProfile:
    return ReferenceProfile.build(draw(np.random.default_rng(2024), 20_000), NAMES)


def _report(profile: ReferenceProfile, X: np.ndarray):
    w = WindowStats.empty(profile)
    w.update(X)
    return score_window(profile, w)


@pytest.mark.parametrize("n", [300, 1000])
def test_no_false_alarms_from_the_variance_test(profile, n) -> None:
    rng = np.random.default_rng(n)
    drifted = dict.fromkeys(NAMES, 0)
    for _ in range(200):
        for f in _report(profile, draw(rng, n)).features:
            drifted[f.name] += f.verdict == "drift"
    # Measured: none in 300 windows per size; allow 1 % as the other statistical tests do.
    assert all(count <= 2 for count in drifted.values()), drifted


@pytest.mark.parametrize(
    ("name", "scale", "at_least"),
    [("tied", 2.0, 48), ("tied", 1.5, 40), ("tied_positive", 2.0, 48)],
)
def test_spread_change_on_tied_features_is_detected_at_n_1000(
    profile, name, scale, at_least
) -> None:
    rng = np.random.default_rng(11)
    j = NAMES.index(name)
    hits = 0
    for _ in range(50):
        X = draw(rng, 1000)
        X[:, j] = GENERATORS[name](rng, 1000, scale)
        f = _report(profile, X).feature(name)
        assert f.ks_pvalue is not None and f.mean_pvalue is not None
        hits += f.verdict == "drift"
        assert f.variance_ratio is not None and f.variance_ratio > 1.2
    assert hits >= at_least, hits


def test_variance_ratio_pvalue_edges() -> None:
    assert variance_ratio_pvalue(1, 1.0, 3.0, 100, 1.0, 3.0) == (None, 1.0)
    assert variance_ratio_pvalue(100, 0.0, 3.0, 100, 1.0, 3.0) == (None, 1.0)
    ratio, p = variance_ratio_pvalue(10_000, 1.0, 3.0, 10_000, 1.0, 3.0)
    assert ratio == 1.0 and p == 1.0
    ratio, p = variance_ratio_pvalue(10_000, 1.0, 3.0, 10_000, 0.0, 3.0)
    assert ratio == 0.0 and p == 0.0
    # heavier tails make the same ratio less significant
    _, light = variance_ratio_pvalue(1000, 1.0, 3.0, 1000, 1.2, 3.0)
    _, heavy = variance_ratio_pvalue(1000, 1.0, 30.0, 1000, 1.2, 3.0)
    assert light < heavy
