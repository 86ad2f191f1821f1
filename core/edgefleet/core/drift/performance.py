"""Confusion counts for windows with ground-truth labels (concept drift).

``matrix[i, j]`` counts samples of true class ``labels[i]`` predicted as
``labels[j]``. Pairs where either label is not in ``labels`` are not placed in
the matrix but counted in ``unknown`` (feedback may name classes the model
does not know). Counts add, so merging is exact, associative and commutative.

Metrics (for class ``c``: ``TP = M[c, c]``, ``FP = column sum - TP``,
``FN = row sum - TP``)::

    accuracy  = trace(M) / sum(M)
    precision = TP / (TP + FP)     recall = TP / (TP + FN)
    F1        = 2 TP / (2 TP + FP + FN)

with 0 when a denominator is 0 (scikit-learn's ``zero_division=0``); macro
averages are unweighted means over all ``labels``. Reference: scikit-learn
``precision_recall_fscore_support``; Sokolova & Lapalme, "A systematic
analysis of performance measures for classification tasks", IPM 45 (2009).

>>> cc = ConfusionCounts([0, 1])
>>> cc.update([0, 0, 1, 1], [0, 1, 1, 1])
>>> m = cc.metrics()
>>> m["accuracy"], m["per_class"]["1"]["precision"], round(m["macro"]["f1"], 4)
(0.75, 0.6666666666666666, 0.7333)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edgefleet.core.drift.reference import Level, as_level
from edgefleet.core.errors import DriftError


class ConfusionCounts:
    """Mergeable confusion matrix over a fixed list of class labels."""

    def __init__(
        self,
        labels: Sequence[Any],
        matrix: np.ndarray | None = None,
        unknown: int = 0,
    ) -> None:
        self.labels: tuple[Level, ...] = tuple(as_level(v) for v in labels)
        if not self.labels or len(set(self.labels)) != len(self.labels):
            raise DriftError("labels must be a non-empty list of distinct values")
        k = len(self.labels)
        self.matrix = (
            np.zeros((k, k), dtype=np.int64) if matrix is None else np.array(matrix, dtype=np.int64)
        )
        if self.matrix.shape != (k, k) or (self.matrix < 0).any() or unknown < 0:
            raise DriftError(f"confusion matrix must be {k}x{k} non-negative counts")
        self.unknown = int(unknown)
        self._index = {v: i for i, v in enumerate(self.labels)}

    @property
    def n(self) -> int:
        return int(self.matrix.sum())

    def _indexes(self, values: np.ndarray) -> np.ndarray:
        uniq, inverse = np.unique(values, return_inverse=True)
        mapped = []
        for u in uniq:
            try:
                mapped.append(self._index.get(as_level(u), -1))
            except DriftError:
                mapped.append(-1)
        return np.array(mapped, dtype=np.intp)[inverse.ravel()]

    def update(
        self, y_true: Sequence[Any] | np.ndarray, y_pred: Sequence[Any] | np.ndarray
    ) -> None:
        t, p = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
        if t.shape != p.shape:
            raise DriftError("y_true and y_pred must have the same length")
        if t.size == 0:
            return
        ti, pi = self._indexes(t), self._indexes(p)
        ok = (ti >= 0) & (pi >= 0)
        k = len(self.labels)
        self.matrix += np.bincount(ti[ok] * k + pi[ok], minlength=k * k).reshape(k, k)
        self.unknown += int((~ok).sum())

    def merge(self, other: ConfusionCounts) -> ConfusionCounts:
        if other.labels != self.labels:
            raise DriftError("confusion counts over different label lists cannot be merged")
        return ConfusionCounts(
            self.labels, self.matrix + other.matrix, self.unknown + other.unknown
        )

    def metrics(self) -> dict[str, Any]:
        m = self.matrix.astype(np.float64)
        tp = np.diag(m)
        predicted, actual = m.sum(axis=0), m.sum(axis=1)
        precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
        recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
        denom = predicted + actual
        f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
        n = self.n
        return {
            "n": n,
            "unknown": self.unknown,
            "accuracy": float(tp.sum() / n) if n else None,
            "macro": {
                "precision": float(precision.mean()),
                "recall": float(recall.mean()),
                "f1": float(f1.mean()),
            },
            "per_class": {
                str(label): {
                    "precision": float(precision[i]),
                    "recall": float(recall[i]),
                    "f1": float(f1[i]),
                    "support": int(actual[i]),
                }
                for i, label in enumerate(self.labels)
            },
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "labels": list(self.labels),
            "matrix": self.matrix.tolist(),
            "unknown": self.unknown,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ConfusionCounts:
        try:
            return cls(d["labels"], np.array(d["matrix"], dtype=np.int64), int(d.get("unknown", 0)))
        except (KeyError, TypeError, ValueError) as e:
            raise DriftError(f"malformed confusion counts: {e!r}") from e

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ConfusionCounts)
            and self.labels == other.labels
            and self.unknown == other.unknown
            and np.array_equal(self.matrix, other.matrix)
        )

    __hash__ = None  # type: ignore[assignment]
