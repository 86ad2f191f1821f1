"""What one answered request hands telemetry: its drift rows and one output per sample.

Tables (format 1) hand over the validated input as it is: its columns are the
reference profile's features. A tensor bundle (format 2) hands over the class
per sample when the model has one (its label output, or the top-1 index of
its probabilities: what the rollout gates' class-mix PSI counts) and, when it
carries a drift reference, a small fixed vector per sample instead of the
input (:class:`~edgefleet.core.drift.tensor_summary.TensorDriftPlan`:
per-channel mean/std/min/max of each input, output monitors), so the window
never sees a pixel. Computed on the request's own thread (the worker for big
bodies), not the event loop.
"""

from __future__ import annotations

import logging
import weakref

import numpy as np

from edgefleet.agent.model.runtime import LoadedModel, Prediction
from edgefleet.core.drift.tensor_summary import TensorDriftPlan

log = logging.getLogger("edgefleet.agent.endpoint")


class TelemetryRows:
    def __init__(self) -> None:
        # model -> (its plan, whether its bundle has a drift reference); None for a table.
        self._plans: weakref.WeakKeyDictionary[LoadedModel, tuple[TensorDriftPlan, bool] | None] = (
            weakref.WeakKeyDictionary()
        )

    def plan(self, model: LoadedModel) -> tuple[TensorDriftPlan, bool] | None:
        if model in self._plans:
            return self._plans[model]
        io = model.schema.io
        found = None
        if io is not None:
            manifest = model.manifest
            referenced = manifest is not None and manifest.reference_path is not None
            found = (TensorDriftPlan.from_io_schema(io), referenced)
        self._plans[model] = found
        return found

    def rows(
        self,
        model: LoadedModel,
        feeds: dict[str, np.ndarray],
        X: np.ndarray,
        prediction: Prediction,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(X for the window, one output per sample)``."""
        found = self.plan(model)
        if found is None:
            return X, prediction.primary
        plan, referenced = found
        outputs = dict(zip(model.output_names, prediction.outputs, strict=True))
        classes = plan.classes(outputs, model.labels)
        primary = prediction.primary if classes is None else classes
        if not referenced or plan.empty:
            return X, primary  # no window statistics: the input is not looked at
        try:
            return plan.rows(feeds, outputs), primary
        except (KeyError, ValueError) as e:  # a request without an optional input
            log.debug("no drift rows for %s: %s", model.name, e)
            return np.zeros((0, len(plan.feature_names))), np.zeros(0)
