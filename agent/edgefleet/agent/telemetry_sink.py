"""Where the serving path reports what it did: the :class:`TelemetrySink` protocol.

The endpoint and ``agent predict`` call a sink after every inference, every
rejected request and every late label. The daemon plugs in the telemetry
buffer's window recorder; tests plug in :class:`RecordingTelemetrySink`;
anything that only serves uses :class:`NullTelemetrySink`.

Invariants every implementation keeps:

- The methods are called from the endpoint's event-loop thread (inference,
  after the response was written, and errors) or a worker thread (errors of
  large requests, just before the worker writes their answer, and feedback
  of large requests), so implementations are thread-safe, cheap (aggregate in
  memory, flush elsewhere) and do not raise: a failing sink never turns a
  good answer into an error. The endpoint still guards each call and counts
  failures in ``/metrics``.
- A sink may also implement :class:`BatchTelemetrySink.record_inferences`;
  the endpoint then reports the requests answered in one event-loop pass
  together (one drift update for several single-row requests).
- ``X`` is the validated 2-D input batch exactly as the model saw it, and
  ``predictions`` is 1-D with one entry per row: the label for classifiers,
  the value for regressors (what drift windows count as model outputs).
- ``kind`` in :meth:`TelemetrySink.record_error` is a short token such as
  ``"shape"``, ``"dtype"``, ``"features"``, ``"non_finite"``, ``"json"``,
  ``"binary"`` or ``"runtime"``; schema violations are the kinds listed in
  :data:`SCHEMA_ERROR_KINDS`; only :data:`MODEL_FAILURE_KINDS` count against
  a version on probation (:func:`counts_against_version`).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

# Error kinds that mean "the request did not match the model's io schema".
SCHEMA_ERROR_KINDS: frozenset[str] = frozenset(
    {"name", "dtype", "shape", "features", "non_finite", "empty", "datatype", "data"}
)
# Error kinds that are the model's or the runtime's fault (a 5xx). Every other
# kind is the client's mistake (a 4xx: not JSON, wrong shape or type, too
# large) and never counts against a version on probation.
MODEL_FAILURE_KINDS: frozenset[str] = frozenset({"runtime"})


def counts_against_version(kind: str) -> bool:
    """Whether an error of ``kind`` is evidence against the model version (probation)."""
    return kind in MODEL_FAILURE_KINDS


@runtime_checkable
class TelemetrySink(Protocol):
    """Receives the accounting of the serving path (see the module invariants)."""

    def record_inference(
        self,
        model: str,
        version: int,
        X: np.ndarray,
        predictions: np.ndarray,
        latency_ms: float,
        prediction_ids: Sequence[str],
    ) -> None:
        """One successful inference call of ``len(X)`` rows taking ``latency_ms``."""

    def record_error(self, model: str, version: int | None, kind: str) -> None:
        """One failed request for ``model`` (``version`` None when no version was resolved)."""

    def record_feedback(self, model: str, prediction_id: str, label: Any) -> bool:
        """A late label for an earlier prediction; False when the id is unknown or expired."""


@runtime_checkable
class BatchTelemetrySink(TelemetrySink, Protocol):
    """A sink that can take several answered requests of one model version at once.

    The endpoint calls this (when present) with the requests it answered in one
    event-loop pass: ``X``, ``predictions`` and ``prediction_ids`` are the rows
    of all of them concatenated in order, ``latencies_ms`` has one entry per
    request. Equivalent to one :meth:`record_inference` per request, but lets
    the sink update its statistics once.
    """

    def record_inferences(
        self,
        model: str,
        version: int,
        X: np.ndarray,
        predictions: np.ndarray,
        latencies_ms: Sequence[float],
        prediction_ids: Sequence[str],
    ) -> None: ...


class NullTelemetrySink:
    """Discards everything; feedback is never matched."""

    def record_inference(
        self,
        model: str,
        version: int,
        X: np.ndarray,
        predictions: np.ndarray,
        latency_ms: float,
        prediction_ids: Sequence[str],
    ) -> None:
        return None

    def record_error(self, model: str, version: int | None, kind: str) -> None:
        return None

    def record_feedback(self, model: str, prediction_id: str, label: Any) -> bool:
        return False


@dataclass
class InferenceRecord:
    """One :meth:`TelemetrySink.record_inference` call as seen by :class:`RecordingTelemetrySink`."""

    model: str
    version: int
    X: np.ndarray
    predictions: np.ndarray
    latency_ms: float
    prediction_ids: list[str]


@dataclass
class RecordingTelemetrySink:
    """Keeps every call in memory (tests, and ``agent predict`` summaries).

    Feedback is matched against the prediction ids it has recorded, so a test
    can check the whole predict -> feedback round trip.
    """

    inferences: list[InferenceRecord] = field(default_factory=list)
    errors: list[tuple[str, int | None, str]] = field(default_factory=list)
    feedback: list[tuple[str, str, Any]] = field(default_factory=list)
    _known_ids: dict[str, str] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record_inference(
        self,
        model: str,
        version: int,
        X: np.ndarray,
        predictions: np.ndarray,
        latency_ms: float,
        prediction_ids: Sequence[str],
    ) -> None:
        ids = list(prediction_ids)
        with self._lock:
            self.inferences.append(
                InferenceRecord(model, version, np.array(X), np.array(predictions), latency_ms, ids)
            )
            for pid in ids:
                self._known_ids[pid] = model

    def record_error(self, model: str, version: int | None, kind: str) -> None:
        with self._lock:
            self.errors.append((model, version, kind))

    def record_feedback(self, model: str, prediction_id: str, label: Any) -> bool:
        with self._lock:
            if self._known_ids.get(prediction_id) != model:
                return False
            self.feedback.append((model, prediction_id, label))
            return True

    def error_kinds(self) -> list[str]:
        with self._lock:
            return [kind for _, _, kind in self.errors]

    def rows(self) -> int:
        with self._lock:
            return sum(len(r.X) for r in self.inferences)
