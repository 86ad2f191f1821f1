"""Confusion counts and metrics against scikit-learn on the same labels."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, precision_recall_fscore_support

from edgefleet.core.drift import ConfusionCounts
from edgefleet.core.errors import DriftError

LABELS = [0, 1, 2, 3]
pairs = st.lists(
    st.tuples(st.sampled_from(LABELS), st.sampled_from(LABELS)), min_size=1, max_size=200
)


@settings(max_examples=60, deadline=None)
@given(pairs)
def test_metrics_equal_sklearn(data) -> None:
    y_true = np.array([t for t, _ in data])
    y_pred = np.array([p for _, p in data])
    cc = ConfusionCounts(LABELS)
    cc.update(y_true, y_pred)
    m = cc.metrics()
    assert m["n"] == len(data)
    assert m["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    p, r, f, s = precision_recall_fscore_support(
        y_true, y_pred, labels=LABELS, zero_division=0, average=None
    )
    for i, label in enumerate(LABELS):
        got = m["per_class"][str(label)]
        assert got["precision"] == pytest.approx(p[i])
        assert got["recall"] == pytest.approx(r[i])
        assert got["f1"] == pytest.approx(f[i])
        assert got["support"] == s[i]
    mp, mr, mf, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=LABELS, zero_division=0, average="macro"
    )
    assert m["macro"] == pytest.approx({"precision": mp, "recall": mr, "f1": mf})


@settings(max_examples=40, deadline=None)
@given(pairs, pairs)
def test_merge_equals_counting_everything_at_once(a, b) -> None:
    def counts(data):
        cc = ConfusionCounts(LABELS)
        cc.update([t for t, _ in data], [p for _, p in data])
        return cc

    assert counts(a).merge(counts(b)) == counts(a + b)
    assert counts(a).merge(counts(b)) == counts(b).merge(counts(a))


def test_string_labels_unknown_labels_and_dict_round_trip() -> None:
    cc = ConfusionCounts(["cat", "dog"])
    cc.update(["cat", "dog", "dog", "fox"], ["cat", "cat", "dog", "dog"])
    assert cc.n == 3 and cc.unknown == 1
    d = json.loads(json.dumps(cc.to_dict()))
    assert ConfusionCounts.from_dict(d) == cc
    assert cc.metrics()["per_class"]["dog"]["recall"] == 0.5


def test_empty_counts_have_no_accuracy() -> None:
    m = ConfusionCounts([0, 1]).metrics()
    assert m["accuracy"] is None and m["macro"]["f1"] == 0.0


def test_bad_input_is_refused() -> None:
    with pytest.raises(DriftError):
        ConfusionCounts([])
    with pytest.raises(DriftError):
        ConfusionCounts([1, 1])
    with pytest.raises(DriftError, match="same length"):
        ConfusionCounts([0, 1]).update([0], [0, 1])
    with pytest.raises(DriftError, match="different label"):
        ConfusionCounts([0, 1]).merge(ConfusionCounts([0, 2]))
    with pytest.raises(DriftError, match="2x2"):
        ConfusionCounts.from_dict({"labels": [0, 1], "matrix": [[1]]})
    with pytest.raises(DriftError, match="malformed"):
        ConfusionCounts.from_dict({"matrix": [[1]]})
