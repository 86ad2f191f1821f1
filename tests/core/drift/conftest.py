"""Shared builders for the drift tests: small deterministic profiles."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.core.drift import ReferenceProfile

MIXED_NAMES = ["normal", "tied", "color", "lognormal"]
MIXED_KINDS = ["numeric", "numeric", "categorical", "numeric"]


def mixed_data(rng: np.random.Generator, n: int) -> np.ndarray:
    """Normal, heavily tied, categorical (codes 0-5, 5 rare) and skewed columns."""
    color = rng.choice(6, size=n, p=[0.4, 0.3, 0.2, 0.095, 0.004, 0.001]).astype(float)
    return np.column_stack(
        [
            rng.normal(10.0, 2.0, n),
            np.where(rng.random(n) < 0.6, 0.0, rng.integers(1, 4, n)).astype(float),
            color,
            rng.lognormal(0.0, 1.0, n),
        ]
    )


@pytest.fixture(scope="session")
def mixed_profile() -> ReferenceProfile:
    rng = np.random.default_rng(20240601)
    X = mixed_data(rng, 5000)
    labels = rng.integers(0, 3, 5000)
    return ReferenceProfile.build(X, MIXED_NAMES, MIXED_KINDS, outputs=labels, output_kind="class")


@pytest.fixture(scope="session")
def normal_profile() -> ReferenceProfile:
    rng = np.random.default_rng(7)
    return ReferenceProfile.build(rng.normal(size=(20_000, 1)), ["x"])


@pytest.fixture(scope="session")
def make_mixed():
    """``make_mixed(rng, n)``: rows drawn like the ``mixed_profile`` reference."""
    return mixed_data
