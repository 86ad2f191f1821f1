"""What one answered request hands telemetry: its drift rows and one output per sample.

Tables (format 1) hand over the validated input as it is: its columns are the
reference profile's features. A tensor bundle (format 2) with a drift
reference hands over a small fixed vector per sample instead
(:class:`~edgefleet.core.drift.tensor_summary.TensorDriftPlan`: per-channel
mean/std/min/max of each input, output monitors) and the class per sample
when the model has one, so the window never sees a pixel. Computed on the
request's own thread (the worker for big bodies), not the event loop.
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
        # model -> its plan, or None (a table, or no drift reference: nothing to summarise).
        self._plans: weakref.WeakKeyDictionary[LoadedModel, TensorDriftPlan | None] = (
            weakref.WeakKeyDictionary()
        )

    def plan(self, model: LoadedModel) -> TensorDriftPlan | None:
        if model in self._plans:
            return self._plans[model]
        io = model.schema.io
        manifest = model.manifest
        plan = None
        if io is not None and manifest is not None and manifest.reference_path is not None:
            plan = TensorDriftPlan.from_io_schema(io)
            if plan.empty:
                plan = None
        self._plans[model] = plan
        return plan

    def rows(
        self,
        model: LoadedModel,
        feeds: dict[str, np.ndarray],
        X: np.ndarray,
        prediction: Prediction,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(X for the window, one output per sample)``."""
        plan = self.plan(model)
        if plan is None:
            return X, prediction.primary
        outputs = dict(zip(model.output_names, prediction.outputs, strict=True))
        try:
            rows = plan.rows(feeds, outputs)
            classes = plan.classes(outputs)
        except (KeyError, ValueError) as e:  # a request without an optional input
            log.debug("no drift rows for %s: %s", model.name, e)
            return np.zeros((0, len(plan.feature_names))), np.zeros(0)
        return rows, (prediction.primary if classes is None else classes)
