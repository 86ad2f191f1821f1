"""Reference profiles: bins, vocabularies, outputs, profile_id and the JSON form."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from edgefleet.core.drift import CategoricalReference, NumericReference, ReferenceProfile
from edgefleet.core.drift.reference import canonical_json
from edgefleet.core.errors import DriftError


def test_numeric_bins_are_reference_quantiles_with_open_outer_bins() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=10_000)
    f = ReferenceProfile.build(x[:, None], ["x"]).features[0]
    assert isinstance(f, NumericReference)
    assert f.n_bins == 20
    edges = np.array(f.edges)
    assert np.all(np.diff(edges) > 0)
    # Each edge is an observed value; side="right": a value equal to an edge goes right.
    assert set(edges) <= set(x)
    expected = np.bincount(np.searchsorted(edges, x, side="right"), minlength=20)
    assert f.counts == tuple(expected)
    assert all(abs(c - 500) <= 1 for c in f.counts)  # ventiles
    sums = np.bincount(np.searchsorted(edges, x, side="right"), weights=x, minlength=20)
    np.testing.assert_allclose(f.sums, sums, rtol=1e-12)
    assert (f.n, f.min, f.max) == (10_000, x.min(), x.max())
    assert f.mean == pytest.approx(x.mean(), rel=1e-12)
    assert f.std == pytest.approx(x.std(), rel=1e-12)  # population std, as Evidently


def test_bin_count_is_configurable() -> None:
    x = np.arange(1000.0)[:, None]
    assert ReferenceProfile.build(x, ["x"], n_bins=10).features[0].n_bins == 10  # type: ignore[union-attr]
    assert ReferenceProfile.build(x, ["x"], n_bins=50).features[0].n_bins == 50  # type: ignore[union-attr]


def test_ties_collapse_and_no_bin_is_empty() -> None:
    rng = np.random.default_rng(2)
    x = np.where(rng.random(5000) < 0.7, 0.0, rng.integers(1, 4, 5000)).astype(float)
    f = ReferenceProfile.build(x[:, None], ["x"]).features[0]
    assert isinstance(f, NumericReference)
    assert f.edges == (1.0, 2.0, 3.0)  # 0 is the minimum: no edge there
    assert f.n_bins == 4 and min(f.counts) > 0 and sum(f.counts) == 5000


def test_nan_and_inf_are_counted_outside_the_bins() -> None:
    x = np.array([1.0, 2.0, np.nan, np.inf, -np.inf, 3.0, 4.0])
    f = ReferenceProfile.build(x[:, None], ["x"], n_bins=2).features[0]
    assert isinstance(f, NumericReference)
    assert (f.n, f.nan, f.inf) == (4, 1, 2)


def test_feature_without_finite_values_is_refused() -> None:
    with pytest.raises(DriftError, match="no finite"):
        ReferenceProfile.build(np.full((10, 1), np.nan), ["x"])


def test_categorical_vocabulary_covers_99_percent_then_other_and_unseen(mixed_profile) -> None:
    color = mixed_profile.features[2]
    assert isinstance(color, CategoricalReference)
    # 40 + 30 + 20 + 9.5 % >= 99 %: levels 4 (0.4 %) and 5 (0.1 %) fold into "other".
    assert color.vocabulary == (0, 1, 2, 3)
    assert color.other_levels == (4, 5)
    assert len(color.counts) == 6 and color.counts[-1] == 0
    assert color.bucket_names == ("0", "1", "2", "3", "other", "unseen")
    assert sum(color.counts) == color.n == 5000


def test_vocabulary_is_capped_at_max_categories() -> None:
    x = np.repeat(np.arange(100.0), 10)[:, None]
    f = ReferenceProfile.build(x, ["c"], ["categorical"], max_categories=64).features[0]
    assert isinstance(f, CategoricalReference)
    assert len(f.vocabulary) == 64 and len(f.other_levels) == 36
    assert f.counts[64] == 360


def test_outputs_profiled_as_classes_or_scores() -> None:
    rng = np.random.default_rng(3)
    X = rng.normal(size=(500, 2))
    labels = np.array(["cat", "dog", "cat", "bird"] * 125)
    p = ReferenceProfile.build(X, ["a", "b"], outputs=labels, output_kind="class")
    assert isinstance(p.outputs, CategoricalReference)
    assert set(p.outputs.vocabulary) == {"cat", "dog", "bird"}  # every class, no coverage cut
    q = ReferenceProfile.build(X, ["a", "b"], outputs=rng.random(500), output_kind="score")
    assert isinstance(q.outputs, NumericReference) and q.output_kind == "score"
    with pytest.raises(DriftError):
        ReferenceProfile.build(X, ["a", "b"], outputs=rng.random((500, 2)))


def test_json_round_trip_and_stable_profile_id(mixed_profile) -> None:
    text = mixed_profile.to_json()
    back = ReferenceProfile.from_json(text)
    assert back == mixed_profile
    assert back.profile_id == mixed_profile.profile_id
    assert back.to_json() == text
    # profile_id is sha256 over the canonical JSON of everything but the id.
    content = json.loads(text)
    del content["profile_id"]
    assert mixed_profile.profile_id == hashlib.sha256(canonical_json(content)).hexdigest()


def test_profile_id_depends_on_content_only() -> None:
    rng = np.random.default_rng(4)
    X = rng.normal(size=(300, 2))
    a = ReferenceProfile.build(X, ["a", "b"])
    assert ReferenceProfile.build(X.copy(), ["a", "b"]).profile_id == a.profile_id
    assert ReferenceProfile.build(X.astype(np.float64), ["a", "b"]).profile_id == a.profile_id
    assert ReferenceProfile.build(X, ["a", "c"]).profile_id != a.profile_id
    assert ReferenceProfile.build(X, ["a", "b"], n_bins=10).profile_id != a.profile_id
    X2 = X.copy()
    X2[0, 0] += 1e-9
    assert ReferenceProfile.build(X2, ["a", "b"]).profile_id != a.profile_id


def test_tampered_or_malformed_json_is_refused(mixed_profile) -> None:
    d = json.loads(mixed_profile.to_json())
    d["features"][0]["mean"] += 1.0
    with pytest.raises(DriftError, match="profile_id"):
        ReferenceProfile.from_json(json.dumps(d))
    with pytest.raises(DriftError, match="JSON"):
        ReferenceProfile.from_json("{not json")
    with pytest.raises(DriftError, match="format"):
        ReferenceProfile.from_json(json.dumps({"format": "other"}))
    d = json.loads(mixed_profile.to_json())
    del d["features"][0]["edges"]
    with pytest.raises(DriftError, match="malformed"):
        ReferenceProfile.from_json(json.dumps(d))


@pytest.mark.parametrize(
    ("X", "names", "kinds", "message"),
    [
        (np.zeros(5), ["a"], None, "2-D"),
        (np.zeros((5, 2)), ["a"], None, "feature names"),
        (np.zeros((5, 1)), ["a"], ["text"], "kinds"),
        (np.zeros((5, 2)), ["a", "a"], None, "unique"),
        (np.array([[1.0], [np.inf]]), ["c"], ["categorical"], "infinite"),
    ],
)
def test_bad_reference_input_gives_a_clear_error(X, names, kinds, message) -> None:
    with pytest.raises(DriftError, match=message):
        ReferenceProfile.build(X, names, kinds)


def test_n_bins_bounds() -> None:
    with pytest.raises(DriftError, match="n_bins"):
        ReferenceProfile.build(np.zeros((5, 1)), ["a"], n_bins=1)
