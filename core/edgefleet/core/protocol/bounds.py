"""Plausibility bounds of telemetry a device sends: the one rule the hub checks before storing.

The decoders (:mod:`~edgefleet.core.protocol.telemetry`) check types and signs; this module
checks that the *numbers* are ones a real device could have produced, so nothing a device
claims can overflow a database column, poison an aggregate or stop a worker. Pure: the
caller passes the hub's ``now`` and the device's limits.

Rules (a record breaking one is refused with the :class:`Refusal` reason in brackets):

- every integer anywhere in a record body (and every seq and ``after_seq`` of a batch) is
  within ``[-MAX_SAFE_INT, MAX_SAFE_INT]`` (2^53 - 1: exact in SQLite, PostgreSQL and any
  JSON reader); every float is finite ("number_out_of_range");
- a window's counts agree with each other: ``sum(errors) <= requests``,
  ``schema_violations <= sum(errors)``, and its latency histogram counts the answered
  requests: ``requests - sum(errors) <= sum(latency counts) <= requests`` (the agent counts
  exactly the answered ones; the upper slack accepts senders that time failed requests
  too) ("inconsistent_counts");
- a window starts no later than ``now + MAX_CLOCK_SKEW_S`` and ends no later than that
  either ("from_the_future"), and starts no earlier than ``now - max_age_s``, the hub's
  raw retention ("too_old");
- a window holds at most ``max(end_s - start_s, 1) * max_requests_per_s`` requests, the
  device profile's ceiling ("rate_exceeded");
- a window's drift statistics, if present, decode and hold only non-negative counts within
  ``MAX_SAFE_INT`` and finite sums and moments ("drift_out_of_range"); a blob that does not decode is
  left to the ingest, which counts it as malformed.

Bodies that are not valid windows at all (missing fields, wrong types) are not judged
here: the ingest stores them as ``malformed`` (see :mod:`telemetry`).
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edgefleet.core.errors import ProtocolError
from edgefleet.core.protocol.telemetry import WINDOW, TelemetryBatch, TelemetryRecord, WindowSummary

if TYPE_CHECKING:
    from edgefleet.core.drift import WindowStats

#: Largest integer a device may send anywhere (2^53 - 1).
MAX_SAFE_INT = 2**53 - 1
#: How far ahead of the hub's clock a window may start or end.
MAX_CLOCK_SKEW_S = 300.0
#: Nesting depth beyond which a body is refused rather than walked.
_MAX_DEPTH = 32

#: Every reason a record can be refused for (metric label values).
REASONS = (
    "number_out_of_range",
    "inconsistent_counts",
    "from_the_future",
    "too_old",
    "rate_exceeded",
    "drift_out_of_range",
)


@dataclass(frozen=True)
class Refusal:
    """Why one record (or a whole batch) is refused: ``reason`` is one of :data:`REASONS`."""

    reason: str
    detail: str


@dataclass(frozen=True)
class WindowLimits:
    """What the hub accepts from one device at one moment."""

    now: float  # the hub's clock
    max_age_s: float  # a window may start this long before ``now`` (raw retention)
    max_requests_per_s: float  # the device profile's ceiling

    def __post_init__(self) -> None:
        if not (math.isfinite(self.now) and self.max_age_s > 0 and self.max_requests_per_s > 0):
            raise ValueError("now must be finite, max_age_s and max_requests_per_s positive")


def number_problem(value: Any, where: str = "body", depth: int = 0) -> str | None:
    """The first integer out of range or non-finite float inside ``value`` (None: all fine)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return None
    if isinstance(value, int):
        return None if -MAX_SAFE_INT <= value <= MAX_SAFE_INT else f"{where} out of range"
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{where} is not finite"
    if depth >= _MAX_DEPTH:
        return f"{where} nested too deep"
    if isinstance(value, Mapping):
        for key, item in value.items():
            problem = number_problem(item, f"{where}.{key}"[:200], depth + 1)
            if problem is not None:
                return problem
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            problem = number_problem(item, f"{where}[{i}]"[:200], depth + 1)
            if problem is not None:
                return problem
    return None


def batch_refusal(batch: TelemetryBatch) -> Refusal | None:
    """A batch whose seqs are out of range is refused whole (it cannot even be acked)."""
    seqs = [r.seq for r in batch.records]
    if batch.after_seq is not None:
        seqs.append(batch.after_seq)
    if max(seqs) > MAX_SAFE_INT:
        return Refusal("number_out_of_range", f"seq above {MAX_SAFE_INT}")
    return None


def record_refusal(record: TelemetryRecord, limits: WindowLimits) -> Refusal | None:
    """Why ``record`` must not be stored or used, or None when it is within bounds."""
    return record_refusals([record], limits)[0]


def record_refusals(
    records: Sequence[TelemetryRecord], limits: WindowLimits
) -> list[Refusal | None]:
    """:func:`record_refusal` of each record; the drift statistics of all the windows are
    decoded together (the batch decoder: a fraction of the per-window cost)."""
    return [checked.refusal for checked in check_records(records, limits)]


@dataclass(frozen=True)
class CheckedRecord:
    """What checking one record found: its refusal (None: within bounds) and, for a window
    that passed, the parts the check decoded — the window, its drift statistics' bytes and
    the statistics (None where a part was absent or did not decode: the ingest then decodes
    and counts it as it would without the check)."""

    refusal: Refusal | None
    window: WindowSummary | None = None
    drift: bytes | None = None
    stats: WindowStats | None = None


def check_records(records: Sequence[TelemetryRecord], limits: WindowLimits) -> list[CheckedRecord]:
    """Check each record against the bounds, keeping what was decoded on the way, so a
    caller that stores the records need not decode them a second time."""
    out: list[CheckedRecord] = []
    drift: list[tuple[int, str]] = []  # (index, blob) of windows passing the other rules
    for record in records:
        refusal, window = _record_refusal(record, limits)
        if refusal is None and window is not None and window.drift is not None:
            drift.append((len(out), window.drift))
        out.append(CheckedRecord(refusal, window if refusal is None else None))
    for (index, _), (raw, stats) in zip(drift, _decode_drift([b for _, b in drift]), strict=True):
        refusal = None if stats is None else _stats_refusal(stats)
        kept = refusal is None and stats is not None
        out[index] = CheckedRecord(
            refusal,
            out[index].window if refusal is None else None,
            raw if kept else None,
            stats if kept else None,
        )
    return out


def _record_refusal(
    record: TelemetryRecord, limits: WindowLimits
) -> tuple[Refusal | None, WindowSummary | None]:
    """The refusal by every rule but the drift statistics', and the parsed window."""
    problem = number_problem(record.body)
    if problem is not None:
        return Refusal("number_out_of_range", problem), None
    if record.kind != WINDOW:
        return None, None
    try:
        window = record.window()
    except ProtocolError:
        return None, None  # malformed: stored and counted as such by the ingest
    return window_refusal(window, limits, drift=False), window


def window_refusal(w: WindowSummary, limits: WindowLimits, *, drift: bool = True) -> Refusal | None:
    """The window rules of the module docstring, numbers already known to be in range
    (``drift=False``: all but the drift statistics, which the caller checks)."""
    errors = w.error_count
    answered = w.latency_ms.total
    if errors > w.requests or w.schema_violations > errors:
        return Refusal(
            "inconsistent_counts",
            f"errors {errors} / schema violations {w.schema_violations} vs requests {w.requests}",
        )
    if not w.requests - errors <= answered <= w.requests:
        return Refusal(
            "inconsistent_counts", f"latency counts {answered} vs {w.requests - errors} answered"
        )
    latest = limits.now + MAX_CLOCK_SKEW_S
    if w.start_s > latest or w.end_s > latest:
        return Refusal("from_the_future", f"window {w.start_s}..{w.end_s} after now {limits.now}")
    if w.start_s < limits.now - limits.max_age_s:
        return Refusal("too_old", f"window starts {limits.now - w.start_s:.0f} s before now")
    ceiling = max(w.end_s - w.start_s, 1.0) * limits.max_requests_per_s
    if w.requests > ceiling:
        return Refusal(
            "rate_exceeded",
            f"{w.requests} requests in {w.end_s - w.start_s:.0f} s (ceiling {ceiling:.0f})",
        )
    if drift and w.drift is not None:
        return drift_refusal(w.drift)
    return None


def drift_refusal(blob_b64: str) -> Refusal | None:
    """Counts in the drift statistics within range, sums finite (undecodable: None)."""
    return drift_refusals([blob_b64])[0]


def drift_refusals(blobs_b64: Sequence[str]) -> list[Refusal | None]:
    """:func:`drift_refusal` of each blob, decoded together."""
    return [
        None if stats is None else _stats_refusal(stats) for _, stats in _decode_drift(blobs_b64)
    ]


def _decode_drift(blobs_b64: Sequence[str]) -> list[tuple[bytes, WindowStats | None]]:
    """Each blob's bytes and statistics (None: not base64 or not decodable — malformed,
    not out of range: the ingest counts it)."""
    # The drift package is heavy: loaded on use.
    from edgefleet.core.drift.wire_batch import decode_many

    raw: list[bytes] = []
    for blob in blobs_b64:
        try:
            raw.append(base64.b64decode(blob, validate=True))
        except (ValueError, binascii.Error):
            raw.append(b"")
    return list(zip(raw, decode_many(raw), strict=True))


def _stats_refusal(stats: WindowStats) -> Refusal | None:
    if not 0 <= stats.rows <= MAX_SAFE_INT or not 0 <= stats.output_rows <= MAX_SAFE_INT:
        return Refusal("drift_out_of_range", "drift row count out of range")
    if stats.ints.size and (int(stats.ints.min()) < 0 or int(stats.ints.max()) > MAX_SAFE_INT):
        return Refusal("drift_out_of_range", "drift counts out of range")
    # Sums must be finite; mins and maxs are +-inf for a column that saw no finite value.
    for name in ("adds", "m2"):
        values = getattr(stats, name)
        if values.size and not bool(np.isfinite(values).all()):
            return Refusal("drift_out_of_range", f"drift {name} not finite")
    return None
