"""The drift reference of a tensor bundle: per-sample summaries of the ``.npz`` reference samples.

:class:`~edgefleet.core.drift.tensor_summary.TensorDriftPlan` (derived from the
io schema, so the agent derives the same) turns every reference sample and
the chosen model's outputs for it into a small fixed vector; the reference
profile is built from those vectors with the existing machinery. Its size
grows with channels and outputs, never with pixels or samples
(docs/drift.md, "Tensor models").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from edgefleet.core.drift import ReferenceProfile
from edgefleet.core.drift.tensor_summary import TensorDriftPlan
from edgefleet.core.errors import DriftError
from edgefleet.core.io_schema import IoSchema

REFERENCE_PATH = "reference.json"


def drift_reference(
    schema: IoSchema,
    samples: dict[str, np.ndarray],
    n: int,
    outputs_of: Callable[[np.ndarray], list[Any]],
    labels: Sequence[Any] | None = None,
    task: str | None = None,
) -> tuple[bytes | None, dict[str, Any]]:
    """``(reference.json bytes, validation note)``; no bytes when nothing can be profiled.
    ``task`` and ``labels`` are the manifest's: the agent derives the same plan from them."""
    plan = TensorDriftPlan.from_io_schema(schema, task, labels)
    if plan.empty:
        return None, {
            "reference": None,
            "reason": "no numeric batched input or output to summarise",
        }
    outputs = dict(zip(schema.output_names, outputs_of(np.arange(n)), strict=True))
    rows = plan.rows(samples, outputs)
    classes = plan.classes(outputs, labels)
    try:
        profile = ReferenceProfile.build(
            rows,
            plan.feature_names,
            outputs=classes,
            output_kind="class",
        )
    except DriftError as e:
        return None, {"reference": None, "reason": f"the reference samples cannot be profiled: {e}"}
    data = profile.to_json().encode()
    return data, {
        "reference": REFERENCE_PATH,
        "samples": n,
        "features": len(plan.feature_names),
        "outputs": "class" if classes is not None else None,
        "bytes": len(data),
    }
