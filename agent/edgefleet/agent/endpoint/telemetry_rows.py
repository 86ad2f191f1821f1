"""What one answered request hands telemetry: its drift rows and one output per sample.

Tables (format 1, and format-2 models with one input per DataFrame column) hand
over the validated input as it is: its columns are the reference profile's
features. A tensor bundle (format 2) hands over one key
per sample whose mix the rollout gates compare between versions
(:func:`~edgefleet.core.drift.tensor_summary.prediction_keys`: the class of a
classifier, the score bin of a detector or anomaly model, the norm bin of an
embedding; one per pixel for a segmenter, one per step for a sequence model) and,
when it
carries a drift reference, a small fixed vector per sample instead of the
input (:class:`~edgefleet.core.drift.tensor_summary.TensorDriftPlan`:
per-channel mean/std/min/max of each input, output monitors), so the window
never sees a pixel. Computed on the request's own thread (the worker for big
bodies), not the event loop, and for big bodies after the answer was handed to
the loop to be written (``Outcome.summary`` in :mod:`~edgefleet.agent.endpoint.app`):
the client does not wait for its drift statistics.
"""

from __future__ import annotations

import logging
import weakref

import numpy as np

from edgefleet.agent.model.runtime import LoadedModel, Prediction
from edgefleet.agent.model.tensors import is_column_model
from edgefleet.core.drift.tensor_summary import TensorDriftPlan, prediction_keys

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
        # A model with one input per DataFrame column is a table to the window: its
        # reference is over the columns (run_infer hands them over as rows).
        if io is not None and not is_column_model(model):
            manifest = model.manifest
            referenced = manifest is not None and manifest.reference_path is not None
            found = (TensorDriftPlan.from_io_schema(io, model.task, model.labels), referenced)
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
        keys = prediction_keys(plan, model.task, outputs, model.labels)
        primary = prediction.primary if keys is None else keys
        if not referenced or plan.empty:
            return X, primary  # no window statistics: the input is not looked at
        try:
            return plan.rows(feeds, outputs), primary
        except (KeyError, ValueError) as e:  # a request without an optional input
            log.debug("no drift rows for %s: %s", model.name, e)
            return np.zeros((0, len(plan.feature_names))), np.zeros(0)
