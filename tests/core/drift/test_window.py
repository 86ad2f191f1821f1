"""Window updates against direct numpy computations on the same raw data."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.core.drift import (
    CategoricalReference,
    NumericReference,
    ReferenceProfile,
    WindowStats,
)
from edgefleet.core.errors import DriftError, ProfileMismatchError


def _with_oddities(X: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    X = X.copy()
    rows = rng.choice(X.shape[0], size=12, replace=False)
    X[rows[:4], 0] = np.nan
    X[rows[4:6], 0] = np.inf
    X[rows[6], 0] = -np.inf
    X[rows[7:9], 3] = np.nan
    X[rows[9], 2] = 42.0  # a color never seen in the reference
    X[rows[10], 2] = np.nan
    X[rows[11], 0] = -1e6  # far below the reference minimum
    return X


def test_numeric_statistics_match_numpy(mixed_profile, make_mixed) -> None:
    rng = np.random.default_rng(11)
    X = _with_oddities(make_mixed(rng, 700), rng)
    w = WindowStats.empty(mixed_profile)
    w.update(X)
    assert w.n == 700
    numeric = [(j, f) for j, f in enumerate(mixed_profile.features) if f.kind == "numeric"]
    for col, (j, ref) in enumerate(numeric):
        assert isinstance(ref, NumericReference)
        x = X[:, j]
        finite = x[np.isfinite(x)]
        c = w.numeric_column(col)
        bins = np.searchsorted(ref.edges, finite, side="right")
        np.testing.assert_array_equal(c.counts, np.bincount(bins, minlength=ref.n_bins))
        np.testing.assert_allclose(
            c.sums, np.bincount(bins, weights=finite, minlength=ref.n_bins), rtol=1e-12, atol=1e-9
        )
        assert c.n == finite.size
        assert c.nan == int(np.isnan(x).sum())
        assert c.inf == int(np.isinf(x).sum())
        assert c.n + c.nan + c.inf == w.n
        assert c.below == int((finite < ref.min).sum())
        assert c.above == int((finite > ref.max).sum())
        assert (c.min, c.max) == (finite.min(), finite.max())
        assert c.mean == pytest.approx(finite.mean(), rel=1e-12)
        assert c.m2 == pytest.approx(((finite - finite.mean()) ** 2).sum(), rel=1e-10)
    assert w.numeric_column(0).below == 1  # the -1e6


def test_values_on_edges_and_extremes_land_like_searchsorted_right(normal_profile) -> None:
    ref = normal_profile.features[0]
    assert isinstance(ref, NumericReference)
    e = np.array(ref.edges)
    probes = np.concatenate(
        [e, np.nextafter(e, -np.inf), np.nextafter(e, np.inf), [ref.min, ref.max, -0.0, 0.0]]
    )
    probes = np.concatenate(
        [probes, np.nextafter([ref.min], -np.inf), np.nextafter([ref.max], np.inf)]
    )
    w = WindowStats.empty(normal_profile)
    w.update(probes[:, None])
    c = w.numeric_column(0)
    expected = np.bincount(np.searchsorted(e, probes, side="right"), minlength=ref.n_bins)
    np.testing.assert_array_equal(c.counts, expected)
    assert (c.below, c.above) == (1, 1)


def test_float32_and_float64_batches_bin_identically(normal_profile) -> None:
    rng = np.random.default_rng(12)
    x32 = rng.normal(size=(500, 1)).astype(np.float32)
    a, b = WindowStats.empty(normal_profile), WindowStats.empty(normal_profile)
    a.update(x32)
    b.update(x32.astype(np.float64))
    assert a.same_as(b)


def test_categorical_buckets_count_vocabulary_other_unseen_and_nan(mixed_profile) -> None:
    color = mixed_profile.features[2]
    assert isinstance(color, CategoricalReference)
    X = np.zeros((9, 4))
    X[:, 2] = [0, 0, 1, 3, 4, 5, 7, np.nan, 2.5]
    w = WindowStats.empty(mixed_profile)
    w.update(X)
    c = w.categorical_column(0)
    # vocabulary 0,1,2,3 | other (4, 5) | unseen (7, 2.5)
    assert c.counts.tolist() == [2, 1, 0, 1, 2, 2]
    assert (c.n, c.nan) == (8, 1)


def test_outputs_class_labels(mixed_profile) -> None:
    w = WindowStats.empty(mixed_profile)
    w.update_outputs(np.array([0, 1, 1, 2, 2, 2, 9]))
    out = w.output_column()
    assert out is not None
    ref = mixed_profile.outputs
    assert isinstance(ref, CategoricalReference)
    expected = {lvl: i for i, lvl in enumerate(ref.vocabulary)}
    counts = out.counts.tolist()
    assert [counts[expected[0]], counts[expected[1]], counts[expected[2]]] == [1, 2, 3]
    assert counts[-1] == 1  # label 9 is unseen
    assert w.output_rows == 7


def test_string_class_outputs_and_score_outputs() -> None:
    rng = np.random.default_rng(13)
    X = rng.normal(size=(400, 2))
    p = ReferenceProfile.build(X, ["a", "b"], outputs=np.array(["no", "yes"] * 200))
    w = WindowStats.empty(p)
    w.update_outputs(np.array(["yes", "yes", "maybe"]))
    assert w.output_column().counts.tolist()[-1] == 1  # type: ignore[union-attr]
    q = ReferenceProfile.build(X, ["a", "b"], outputs=rng.random(400), output_kind="score")
    v = WindowStats.empty(q)
    scores = rng.random(50)
    v.update_outputs(scores)
    out = v.output_column()
    assert out is not None and out.n == 50 and out.mean == pytest.approx(scores.mean())
    with pytest.raises(DriftError, match="numeric"):
        v.update_outputs(np.array(["x"]))


def test_many_small_batches_equal_one_big_batch(mixed_profile, make_mixed) -> None:
    rng = np.random.default_rng(14)
    X = _with_oddities(make_mixed(rng, 1000), rng)
    whole = WindowStats.empty(mixed_profile)
    whole.update(X)
    parts = WindowStats.empty(mixed_profile)
    for chunk in np.array_split(X, 37):
        parts.update(chunk)
    np.testing.assert_array_equal(parts.ints, whole.ints)
    np.testing.assert_allclose(parts.adds, whole.adds, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(parts.m2, whole.m2, rtol=1e-10)
    np.testing.assert_array_equal(parts.mins, whole.mins)
    np.testing.assert_array_equal(parts.maxs, whole.maxs)


def test_bad_batches_are_refused_and_change_nothing(mixed_profile) -> None:
    w = WindowStats.empty(mixed_profile)
    before = w.copy()
    with pytest.raises(DriftError, match="shape"):
        w.update(np.zeros((3, 5)))
    with pytest.raises(DriftError, match="shape"):
        w.update(np.zeros(4))
    with pytest.raises(DriftError, match="numeric"):
        w.update(np.array([["a", "b", "c", "d"]]))
    with pytest.raises(DriftError, match="1-D"):
        w.update_outputs(np.zeros((2, 2)))
    w.update(np.zeros((0, 4)))
    assert w.same_as(before)


def test_decoded_window_needs_its_profile_to_update(mixed_profile, normal_profile) -> None:
    w = WindowStats.empty(mixed_profile)
    w.update(np.ones((3, 4)))
    decoded = WindowStats.from_bytes(w.to_bytes())
    with pytest.raises(DriftError, match="attach"):
        decoded.update(np.ones((1, 4)))
    with pytest.raises(ProfileMismatchError):
        decoded.attach(normal_profile)
    again = WindowStats.from_bytes(w.to_bytes(), profile=mixed_profile)
    again.update(np.ones((2, 4)))
    assert again.n == 5


def test_profile_without_outputs_refuses_outputs(normal_profile) -> None:
    w = WindowStats.empty(normal_profile)
    with pytest.raises(DriftError, match="no output"):
        w.update_outputs(np.array([1.0]))
    assert w.output_column() is None and not w.has_outputs
