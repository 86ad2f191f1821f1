"""The window recorder: the daemon's :class:`TelemetrySink`.

It aggregates the serving path's accounting in memory, per model version and
tumbling window (aligned to multiples of ``window_s`` since the epoch so every
device's windows line up at the hub), and :meth:`WindowRecorder.flush` writes
it to the :class:`TelemetryBuffer` — the daemon calls it every
``flush_interval_s`` (1 s by default).

Invariants:

- Sink methods never raise and never touch the disk, except
  :meth:`record_feedback`, which may look a prediction id up in the ring.
- After a flush, everything recorded before it is durable: closed windows
  as records, open windows in ``open_windows``, new prediction ids in the
  ring. A kill -9 loses at most what came after the last flush.
- :meth:`restore` (at start) closes persisted open windows whose time is
  over and resumes the others, so a restart inside a window neither loses
  nor double counts its accounting.
- A failed flush keeps everything in memory for the next one.
- Errors whose version is unknown (``version=None``) are counted against the
  version currently registered as active for that model; errors for models
  that were never registered only go to an in-memory counter (a client
  sending random model names must not create unbounded windows).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np

from edgefleet.agent.telemetry.buffer import RingEntry, TelemetryBuffer
from edgefleet.agent.telemetry.window_body import (
    LATENCY_EDGES_MS,
    WindowAccumulator,
    label_key,
    latency_bucket,
)
from edgefleet.core.drift.tensor_summary import (
    CLASS_TASKS,
    SCORE_TASKS,
    SEGMENT_TASKS,
    SEQUENCE_TASKS,
)
from edgefleet.core.evidence import LatencySummary

# Tasks whose per-sample keys are counted for the rollout gates without being classes.
COUNTED_TASKS = (*SCORE_TASKS, "embedding", *SEGMENT_TASKS, *SEQUENCE_TASKS)

log = logging.getLogger("edgefleet.agent.telemetry")

try:  # the error kinds are the serving side's vocabulary
    from edgefleet.agent.telemetry_sink import SCHEMA_ERROR_KINDS, counts_against_version
except ImportError:  # pragma: no cover - only without the serving module
    SCHEMA_ERROR_KINDS = frozenset({"name", "dtype", "shape", "features", "non_finite"})

    def counts_against_version(kind: str) -> bool:
        return kind == "runtime"


@dataclass(frozen=True)
class LiveStats:
    """What a version on probation did since probation started.

    Latencies are counted in the telemetry windows' buckets (``LATENCY_EDGES_MS``) and
    their p95 is core's one p95 rule (:meth:`LatencySummary.p95`), so probation, the hub's
    rollout gates and fleet alerts give the same number for the same requests.
    """

    requests: int = 0
    errors: int = 0
    latency: LatencySummary = field(default_factory=LatencySummary)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def p95_latency_ms(self) -> float | None:
        return self.latency.p95()


@dataclass
class _ProbationCounter:
    requests: int = 0
    errors: int = 0
    # One count per window latency bucket: bounded memory whatever the traffic.
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_EDGES_MS) + 1))

    def add_latencies(self, latencies_ms: Sequence[float]) -> None:
        self.requests += len(latencies_ms)
        for latency in latencies_ms:
            self.latency_counts[latency_bucket(latency)] += 1

    def stats(self) -> LiveStats:
        latency = LatencySummary.from_histogram(LATENCY_EDGES_MS, self.latency_counts)
        return LiveStats(self.requests, self.errors, latency)


@dataclass(frozen=True)
class ModelRegistration:
    """What the recorder needs to know about a served model version."""

    model: str
    version: int
    task: str = "classification"
    labels: tuple[Any, ...] | None = None
    reference: Any | None = None  # a drift ReferenceProfile, or None (no drift stats)


def reference_from_json(text: str | bytes | None) -> Any | None:
    """A ReferenceProfile from ``reference.json``; None when absent or unreadable."""
    if not text:
        return None
    try:
        from edgefleet.core.drift import ReferenceProfile

        return ReferenceProfile.from_json(text)
    except Exception as e:  # a bundle without a usable reference still serves
        log.warning("no drift statistics: reference.json unusable (%s)", e)
        return None


class _RingRows(Sequence[RingEntry]):
    """Prediction ids waiting for the next flush, kept column-wise in flat buffers.

    The ids are stored encoded back to back in one ``bytearray`` (each ended
    by a NUL; prediction ids never contain one) with their end offsets in an
    ``array``, the labels in a list of shared strings, plus one ``(first row,
    model, version)`` span each time the model version changes. That is about
    twenty bytes per prediction and no Python object that lives until the
    flush (a second of small objects interleaved with every request's
    short-lived ones keeps the allocator's pools from ever emptying).
    Entries are made only when read: the flush streams them into SQLite.
    """

    def __init__(self) -> None:
        self._blob = bytearray()
        self._ends = array("L")
        self.labels: list[str | None] = []
        self.spans: list[tuple[int, str, int]] = []

    def add(
        self, model: str, version: int, ids: Sequence[str], labels: Sequence[str | None]
    ) -> None:
        if not self.spans or self.spans[-1][1:] != (model, version):
            self.spans.append((len(self.labels), model, version))
        blob, ends = self._blob, self._ends
        for pid in ids:
            blob += pid.encode()
            blob.append(0)
            ends.append(len(blob))
        self.labels.extend(labels)

    def ids(self) -> list[str]:
        return self._blob[:-1].decode().split("\0") if self._blob else []

    def drop_first(self, n: int) -> None:
        """Forget the first ``n`` rows (they were flushed)."""
        if n <= 0:
            return
        cut = self._ends[n - 1]
        del self._blob[:cut]
        self._ends = array("L", (end - cut for end in self._ends[n:]))
        del self.labels[:n]
        spans: list[tuple[int, str, int]] = []
        if self.labels:
            for start, model, version in self.spans:
                if start - n <= 0:
                    spans = [(0, model, version)]  # the span that now holds row 0
                else:
                    spans.append((start - n, model, version))
        self.spans = spans

    def head(self, n: int) -> _RingRows:
        """A copy of the first ``n`` rows."""
        rows = _RingRows()
        if n > 0:
            rows._blob = self._blob[: self._ends[n - 1]]
            rows._ends = self._ends[:n]
            rows.labels = self.labels[:n]
            rows.spans = [span for span in self.spans if span[0] < n]
        return rows

    def __len__(self) -> int:
        return len(self.labels)

    def __iter__(self) -> Iterator[RingEntry]:
        ids = self.ids()
        ends = [start for start, _, _ in self.spans[1:]] + [len(ids)]
        for (start, model, version), end in zip(self.spans, ends, strict=True):
            for i in range(start, end):
                yield RingEntry(ids[i], model, version, self.labels[i])

    @overload
    def __getitem__(self, i: int) -> RingEntry: ...

    @overload
    def __getitem__(self, i: slice) -> list[RingEntry]: ...

    def __getitem__(self, i: int | slice) -> RingEntry | list[RingEntry]:
        entries = list(self)
        return entries[i]


class WindowRecorder:
    """Aggregates per model version and window; implements ``TelemetrySink``.

    Also implements ``BatchTelemetrySink.record_inferences``: the endpoint
    hands over the requests of one event-loop pass together.
    """

    def __init__(
        self,
        buffer: TelemetryBuffer,
        window_s: int,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.buffer = buffer
        self.window_s = int(window_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[tuple[str, int], WindowAccumulator] = {}
        self._closed: list[dict[str, Any]] = []
        self._ring = _RingRows()
        # id -> row in _ring, built only when a label arrives before its flush,
        # covering the first _ring_indexed rows.
        self._ring_index: dict[str, int] = {}
        self._ring_indexed = 0
        self._label_keys: dict[Any, str] = {}
        self._forget: list[str] = []
        self._labelled: set[str] = set()
        self._registrations: dict[tuple[str, int], ModelRegistration] = {}
        self._active: dict[str, int] = {}
        self._probation: dict[tuple[str, int], _ProbationCounter] = {}
        self.unattributed_errors: Counter[str] = Counter()
        self.sink_failures = 0

    # --- registration ----------------------------------------------------------
    def register_model(self, registration: ModelRegistration, *, active: bool = True) -> None:
        with self._lock:
            self._registrations[(registration.model, registration.version)] = registration
            if active:
                self._active[registration.model] = registration.version

    def unregister_active(self, model: str) -> None:
        with self._lock:
            self._active.pop(model, None)

    # --- windows -----------------------------------------------------------------
    def _bounds(self, now: float) -> tuple[float, float]:
        start = math.floor(now / self.window_s) * self.window_s
        return float(start), float(start + self.window_s)

    def _window_for(self, model: str, version: int, now: float) -> WindowAccumulator:
        key = (model, version)
        acc = self._windows.get(key)
        if acc is not None and now >= acc.end_s:
            self._closed.append(acc.to_body())
            acc = None
        if acc is None:
            start, end = self._bounds(now)
            acc = WindowAccumulator(model, version, start, end)
            reg = self._registrations.get(key)
            if reg is not None and reg.reference is not None:
                try:
                    from edgefleet.core.drift import WindowStats

                    acc.drift = WindowStats.empty(reg.reference, start, end)
                except Exception as e:  # drift statistics are best effort
                    log.warning("no drift statistics for %s:%s (%s)", model, version, e)
            self._windows[key] = acc
        return acc

    # --- TelemetrySink -------------------------------------------------------------
    def record_inference(
        self,
        model: str,
        version: int,
        X: np.ndarray,
        predictions: np.ndarray,
        latency_ms: float,
        prediction_ids: Sequence[str],
    ) -> None:
        self.record_inferences(model, version, X, predictions, (latency_ms,), prediction_ids)

    def record_inferences(
        self,
        model: str,
        version: int,
        X: np.ndarray,
        predictions: np.ndarray,
        latencies_ms: Sequence[float],
        prediction_ids: Sequence[str],
    ) -> None:
        """Several answered requests of one model version (rows concatenated, one latency each)."""
        try:
            now = self._clock()
            with self._lock:
                reg = self._registrations.get((model, version))
                # Format 1 says "classification", a declared tensor classifier "classifier";
                # detectors, anomaly models and embeddings count binned keys instead of
                # classes, segmenters a class per pixel, sequence models a key per step
                # (prediction_keys), which feedback never matches.
                task = "classification" if reg is None else reg.task
                classifier = task in CLASS_TASKS
                counted = classifier or task in COUNTED_TASKS
                acc = self._window_for(model, version, now)
                preds = np.asarray(predictions).reshape(-1)
                acc.add_inferences(latencies_ms, preds if counted else None)
                if acc.drift is not None:
                    acc.add_rows(np.asarray(X), preds)
                n = min(len(prediction_ids), len(preds))
                labels: list[str | None]
                if classifier:
                    labels = [self._label_key(v) for v in preds[:n].tolist()]
                else:
                    labels = [None] * n
                self._ring.add(model, version, prediction_ids[:n], labels)
                counter = self._probation.get((model, version))
                if counter is not None:
                    counter.add_latencies(latencies_ms)
        except Exception:  # a failing sink never turns a good answer into an error
            self.sink_failures += 1
            log.exception("telemetry: record_inference failed")

    def _label_key(self, value: Any) -> str:
        key = self._label_keys.get(value)
        if key is None:
            key = label_key(value)
            if len(self._label_keys) < 4096:  # a classifier's labels; regressors never get here
                self._label_keys[value] = key
        return key

    def _pending_entry(self, prediction_id: str) -> RingEntry | None:
        """The entry of an id not flushed yet (lock held)."""
        ring = self._ring
        index = self._ring_index
        if self._ring_indexed < len(ring):
            ids = ring.ids()
            for i in range(self._ring_indexed, len(ids)):
                index[ids[i]] = i
            self._ring_indexed = len(ids)
        row = index.get(prediction_id)
        if row is None:
            return None
        for start, model, version in reversed(ring.spans):
            if start <= row:
                return RingEntry(prediction_id, model, version, ring.labels[row])
        return None

    def record_error(self, model: str, version: int | None, kind: str) -> None:
        try:
            now = self._clock()
            with self._lock:
                if version is None:
                    version = self._active.get(model)
                counter = None if version is None else self._probation.get((model, version))
                if counter is not None and counts_against_version(kind):
                    # A client's mistake (4xx) is neither a request the model
                    # answered nor an error of it: probation ignores it.
                    counter.requests += 1
                    counter.errors += 1
                if version is None or (
                    (model, version) not in self._registrations
                    and (model, version) not in self._windows
                ):
                    self.unattributed_errors[kind] += 1
                    return
                acc = self._window_for(model, version, now)
                acc.add_error(kind, kind in SCHEMA_ERROR_KINDS)
        except Exception:
            self.sink_failures += 1
            log.exception("telemetry: record_error failed")

    def record_feedback(self, model: str, prediction_id: str, label: Any) -> bool:
        try:
            with self._lock:
                if prediction_id in self._labelled:
                    return False
                entry = self._pending_entry(prediction_id)
            if entry is None:
                entry = self.buffer.lookup_prediction(prediction_id)
            if entry is None or entry.model != model:
                return False
            now = self._clock()
            with self._lock:
                if prediction_id in self._labelled:
                    return False
                reg = self._registrations.get((model, entry.version))
                if reg is not None and reg.labels and entry.predicted is not None:
                    acc = self._window_for(model, entry.version, now)
                    if acc.confusion is None:
                        from edgefleet.core.drift import ConfusionCounts

                        acc.confusion = ConfusionCounts(list(reg.labels))
                    by_key = {label_key(v): v for v in reg.labels}
                    truth = by_key.get(label_key(label), label)
                    predicted = by_key.get(entry.predicted, entry.predicted)
                    acc.confusion.update([truth], [predicted])
                    acc.dirty = True
                self._labelled.add(prediction_id)
                self._forget.append(prediction_id)
            return True
        except Exception:
            self.sink_failures += 1
            log.exception("telemetry: record_feedback failed")
            return False

    # --- events -----------------------------------------------------------------------
    def record_event(self, body: dict[str, Any]) -> int:
        """A deployment event, stored durably right away (they are rare and matter)."""
        return self.buffer.append("event", body)

    # --- probation ------------------------------------------------------------------
    def start_probation(self, model: str, version: int) -> None:
        with self._lock:
            self._probation[(model, version)] = _ProbationCounter()

    def probation_stats(self, model: str, version: int) -> LiveStats:
        with self._lock:
            counter = self._probation.get((model, version))
            return LiveStats() if counter is None else counter.stats()

    def stop_probation(self, model: str, version: int) -> None:
        with self._lock:
            self._probation.pop((model, version), None)

    # --- persistence --------------------------------------------------------------
    def restore(self) -> int:
        """Close or resume the windows persisted as open; returns how many resumed.

        Call it after the served models are registered: a window's drift
        statistics can only take more updates with its reference profile.
        """
        now = self._clock()
        resumed = 0
        for body in self.buffer.open_windows():
            try:
                acc = self._resumable(body, now)
            except Exception as e:
                log.info(
                    "closing persisted window %s:%s (%s)", body.get("model"), body.get("version"), e
                )
                acc = None
            if acc is None:
                with self._lock:
                    self._closed.append(body)
                continue
            with self._lock:
                self._windows[(acc.model, acc.version)] = acc
            resumed += 1
        return resumed

    def _resumable(self, body: dict[str, Any], now: float) -> WindowAccumulator | None:
        if float(body["end_s"]) <= now:
            return None
        reg = self._registrations.get((str(body["model"]), int(body["version"])))
        if reg is None:
            return None  # not served any more: nothing will be added to it
        acc = WindowAccumulator.from_body(body, self.buffer.codec)
        if acc.drift is not None:
            if reg.reference is None:
                return None
            acc.drift.attach(reg.reference)
        return acc

    def flush(self) -> list[int]:
        """Write what was recorded since the last flush; returns the seqs of closed windows.

        Open windows are persisted as open (not cut short), so a restart inside
        the window resumes it instead of producing two records for one window.
        Prediction ids stay findable in memory until their transaction committed.
        """
        now = self._clock()
        with self._lock:
            for key, acc in list(self._windows.items()):
                if now >= acc.end_s:
                    self._closed.append(acc.to_body())
                    del self._windows[key]
            closed = self._closed
            opened = [acc.to_body() for acc in self._windows.values() if acc.dirty]
            flushed = len(self._ring)
            ring = self._ring.head(flushed)
            forget = self._forget
            self._closed, self._forget = [], []
            for acc in self._windows.values():
                acc.dirty = False
        if not closed and not opened and not flushed and not forget:
            return []
        try:
            seqs = self.buffer.commit_flush(closed, opened, ring, forget)
        except Exception:
            with self._lock:  # keep everything for the next attempt
                self._closed = closed + self._closed
                self._forget = forget + self._forget
                for body in opened:
                    still_open = self._windows.get((body["model"], body["version"]))
                    if still_open is not None:
                        still_open.dirty = True
            raise
        with self._lock:
            self._ring.drop_first(flushed)
            self._ring_index, self._ring_indexed = {}, 0
            self._labelled.difference_update(forget)
        return seqs
