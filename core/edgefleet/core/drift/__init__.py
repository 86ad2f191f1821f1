"""Drift statistics: reference profiles, mergeable device windows, scores.

Pipeline (docs/drift.md)::

    packager  ReferenceProfile.build(X_ref, names, kinds, outputs=...)  -> reference.json
    device    w = WindowStats.empty(profile); w.update(X); w.update_outputs(y); w.to_bytes()
    hub       WindowStats.merge_all([...]) -> score_window(profile, merged) -> DriftReport

Everything here is pure numpy: no I/O, no clocks, no scipy. docs/drift.md
explains the statistics, the decision rules and the wire format.
"""

from __future__ import annotations

from edgefleet.core.drift.decisions import (
    DriftReport,
    DriftThresholds,
    FeatureScore,
    score_window,
)
from edgefleet.core.drift.performance import ConfusionCounts
from edgefleet.core.drift.reference import (
    CategoricalReference,
    NumericReference,
    ReferenceProfile,
)
from edgefleet.core.drift.window import WindowStats, coarsen

__all__ = [
    "CategoricalReference",
    "ConfusionCounts",
    "DriftReport",
    "DriftThresholds",
    "FeatureScore",
    "NumericReference",
    "ReferenceProfile",
    "WindowStats",
    "coarsen",
    "score_window",
]
