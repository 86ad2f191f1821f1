"""Wire size budget and robustness of the window decoder."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.core.drift import ReferenceProfile, WindowStats
from edgefleet.core.errors import DriftError


@pytest.fixture(scope="module")
def wide_profile() -> ReferenceProfile:
    rng = np.random.default_rng(9)
    return ReferenceProfile.build(rng.normal(size=(20_000, 64)), [f"f{i}" for i in range(64)])


@pytest.mark.parametrize("rows", [300, 1_000, 10_000])
def test_numeric_feature_costs_at_most_250_bytes_at_20_bins(wide_profile, rows) -> None:
    rng = np.random.default_rng(rows)
    w = WindowStats.empty(wide_profile, start_s=0.0, end_s=300.0)
    w.update(rng.normal(size=(rows, 64)).astype(np.float32))
    size = len(w.to_bytes())
    assert size / 64 <= 250, size / 64


def test_empty_window_is_tiny_and_round_trips(wide_profile) -> None:
    w = WindowStats.empty(wide_profile)
    data = w.to_bytes()
    assert len(data) < 200  # layout plus width bytes; no counts, no floats
    assert WindowStats.from_bytes(data).same_as(w)


def _sample(profile: ReferenceProfile) -> bytes:
    rng = np.random.default_rng(1)
    w = WindowStats.empty(profile, start_s=10.0, end_s=20.0)
    X = rng.normal(size=(30, len(profile.features)))
    X[0, 0] = np.nan
    w.update(X)
    if profile.outputs is not None:
        w.update_outputs(np.zeros(30, dtype=int))
    return w.to_bytes()


def test_every_truncation_is_a_clean_error(mixed_profile) -> None:
    data = _sample(mixed_profile)
    for cut in range(len(data)):
        with pytest.raises(DriftError):
            WindowStats.from_bytes(data[:cut])


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: b"XXXX" + d[4:], "magic"),
        (lambda d: d[:4] + b"\x09" + d[5:], "version"),
        (lambda d: d[:5] + b"\x80" + d[6:], "flags"),
        (lambda d: d + b"\x00", "trailing"),
    ],
)
def test_corrupt_headers_are_named(mixed_profile, mutate, message) -> None:
    with pytest.raises(DriftError, match=message):
        WindowStats.from_bytes(mutate(_sample(mixed_profile)))


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 400))
def test_garbage_only_ever_raises_drift_error(mixed_profile, junk, at) -> None:
    data = _sample(mixed_profile)
    for candidate in (junk, data[:at] + junk, data[:at] + junk + data[at + len(junk) :]):
        try:
            w = WindowStats.from_bytes(candidate)
        except DriftError:
            continue
        # Whatever decodes is internally consistent and re-encodes to itself.
        assert WindowStats.from_bytes(w.to_bytes()).same_as(w)


def test_non_bytes_are_refused() -> None:
    with pytest.raises(DriftError):
        WindowStats.from_bytes("not bytes")  # type: ignore[arg-type]
