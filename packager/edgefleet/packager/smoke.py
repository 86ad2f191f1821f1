"""The smoke set: a few reference rows with the packaged model's own outputs.

A device runs it after installing a bundle and before serving (probation).
``smoke.npz`` keys (docs/bundle-format.md, "io schema" and "smoke set"): ``inputs`` float32
(n, d); ``expected_labels`` (n,) for classifiers or ``expected_values`` (n,)
for regressors; ``expected_probabilities`` (n, k) when the model has them;
``atol``, the absolute tolerance for probabilities and values.

Choices the design left open:

- rows come from the evaluation rows (never the calibration rows), in
  reference order, at most :data:`SMOKE_ROWS`;
- the tolerance depends on the variant: float32 kernels agree across CPUs to
  far better than ``1e-4``, int8 and float16 kernels differ by architecture,
  so their tolerance is the larger of a floor and twice the largest difference
  the variant showed against float32 here (capped at 0.1);
- for classifiers only rows whose top-two probability margin exceeds
  ``2 * atol`` are used where possible, so a legal wobble within the tolerance
  cannot flip an expected label on the device;
- everything is stored without pickles (string labels as fixed-width text).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from edgefleet.packager.validate import Outputs

SMOKE_ROWS = 16
ATOL_FLOOR = {"float32": 1e-4, "dynamic": 2e-2, "static": 2e-2, "fp16": 1e-2}
ATOL_CAP = 0.1


def smoke_atol(variant: str, observed_diff: float | None, scale: float = 1.0) -> float:
    """Tolerance for ``variant``; ``scale`` is max(1, |value|) for regression outputs."""
    floor = ATOL_FLOOR.get(variant, 1e-4)
    if variant == "float32" or observed_diff is None:
        return floor * scale
    return min(max(floor * scale, 2.0 * observed_diff), ATOL_CAP * scale)


def choose_rows(outputs: Outputs, atol: float, limit: int = SMOKE_ROWS) -> np.ndarray:
    """Row indexes for the smoke set (see the module docstring)."""
    n = len(outputs.labels) if outputs.labels is not None else len(outputs.values)  # type: ignore[arg-type]
    order = np.arange(n)
    probabilities = outputs.probabilities
    if probabilities is not None and probabilities.shape[1] >= 2:
        top2 = np.sort(probabilities, axis=1)[:, -2:]
        margin = top2[:, 1] - top2[:, 0]
        clear = order[margin > 2 * atol]
        if len(clear) >= min(limit, n):
            order = clear
    return order[:limit]


def build_smoke(
    x32: np.ndarray, outputs: Outputs, task: str, variant: str, observed_diff: float | None
) -> tuple[bytes, dict[str, Any]]:
    """The ``smoke.npz`` bytes and a summary for the report."""
    scale = 1.0
    if task == "regression" and outputs.values is not None and outputs.values.size:
        scale = max(1.0, float(np.max(np.abs(outputs.values))))
    atol = smoke_atol(variant, observed_diff, scale)
    rows = choose_rows(outputs, atol)
    arrays: dict[str, np.ndarray] = {"inputs": np.ascontiguousarray(x32[rows], dtype=np.float32)}
    if task == "classification":
        assert outputs.labels is not None
        labels = outputs.labels[rows]
        arrays["expected_labels"] = (
            labels.astype(str) if labels.dtype.kind in "OUS" else labels.astype(np.int64)
        )
        if outputs.probabilities is not None:
            arrays["expected_probabilities"] = outputs.probabilities[rows].astype(np.float32)
    else:
        assert outputs.values is not None
        arrays["expected_values"] = outputs.values[rows].astype(np.float32)
    arrays["atol"] = np.asarray(atol, dtype=np.float64)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue(), {"rows": int(len(rows)), "atol": atol}
