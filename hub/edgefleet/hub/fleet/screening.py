"""Telemetry screening: every record checked against the bounds before either store sees it.

:class:`TelemetryScreen` applies :mod:`edgefleet.core.protocol.bounds` (the one rule) to a
decoded batch in the hub's inbound worker, before the hub store and the fleet ingest:

- a record out of bounds is replaced by a record of kind ``refused`` with the same seq and
  body ``{"reason": ...}``: both stores keep it (deduplicated like any record) and the ack
  moves past it, so the device drops it instead of resending it forever, while no number
  from it is stored or aggregated;
- a batch whose seqs are out of range cannot be stored or acked at all: it is refused whole
  (``None``);
- each refusal is counted by reason (``edgefleet_hub_telemetry_refused_total`` on
  /metrics) and logged at most once per device every ``LOG_INTERVAL_S``, so a device
  flooding bad records cannot flood the log either.

The device's ceiling comes from its profile's ``max_requests_per_s`` (looked up once per
profile name; an unknown profile gets the documented default).

A window that passes goes on as a :class:`ScreenedWindow`: the same record, carrying what
the check decoded (the window, its statistics' bytes and the statistics), so the ingest
stores it without parsing and decoding it a second time — decoding the statistics is most
of what a window costs the hub.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from edgefleet.core.errors import EdgefleetError
from edgefleet.core.profiles import DEFAULT_MAX_REQUESTS_PER_S, load_profile
from edgefleet.core.protocol import TelemetryBatch, TelemetryRecord
from edgefleet.core.protocol.bounds import (
    Refusal,
    WindowLimits,
    batch_refusal,
    check_records,
)
from edgefleet.core.protocol.telemetry import WindowSummary

if TYPE_CHECKING:
    from edgefleet.core.drift import WindowStats

log = logging.getLogger(__name__)

#: Kind of the record stored in place of one that was refused.
REFUSED = "refused"
#: A device's refusals are logged at most once per this many seconds.
LOG_INTERVAL_S = 60.0


def profile_ceiling(profile: str) -> float:
    """``max_requests_per_s`` of the named profile (the default when it cannot be loaded)."""
    if not profile:
        return float(DEFAULT_MAX_REQUESTS_PER_S)
    try:
        return float(load_profile(profile).max_requests_per_s)
    except EdgefleetError:
        return float(DEFAULT_MAX_REQUESTS_PER_S)


def refused_record(seq: int, reason: str) -> TelemetryRecord:
    return TelemetryRecord(seq, REFUSED, {"reason": reason})


@dataclass(frozen=True)
class ScreenedWindow(TelemetryRecord):
    """A window record within the bounds, with what checking it decoded (see the module
    docstring); in every other respect the record as received."""

    summary: WindowSummary = field(compare=False, repr=False, kw_only=True)
    drift_bytes: bytes = field(compare=False, repr=False, kw_only=True)
    stats: WindowStats = field(compare=False, repr=False, kw_only=True)


class TelemetryScreen:
    """Bounds every batch of every device; thread-safe counters for /metrics."""

    def __init__(
        self,
        max_age_s: float,
        *,
        ceiling: Callable[[str], float] = profile_ceiling,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_age_s = max_age_s
        self._ceiling = ceiling
        self._ceilings: dict[str, float] = {}
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._refused: Counter[str] = Counter()  # records (or batches) by reason
        self._logged: dict[str, tuple[float, int]] = {}  # device -> (last log, suppressed)

    def screen(
        self, device: str, profile: str, batch: TelemetryBatch, now: float
    ) -> TelemetryBatch | None:
        """``batch`` with refused records replaced (see module docstring); None: refuse all."""
        whole = batch_refusal(batch)
        if whole is not None:
            self.note(device, whole, len(batch.records))
            return None
        limits = WindowLimits(now, self.max_age_s, self._profile_ceiling(profile))
        records: list[TelemetryRecord] = []
        for record, checked in zip(
            batch.records, check_records(batch.records, limits), strict=True
        ):
            refusal = checked.refusal
            if refusal is not None:
                self.note(device, refusal, 1, seq=record.seq)
                records.append(refused_record(record.seq, refusal.reason))
            elif checked.window is not None and checked.stats is not None and checked.drift:
                records.append(
                    ScreenedWindow(
                        record.seq,
                        record.kind,
                        record.body,
                        summary=checked.window,
                        drift_bytes=checked.drift,
                        stats=checked.stats,
                    )
                )
            else:
                records.append(record)
        return TelemetryBatch.of(device, records, after_seq=batch.after_seq)

    def note(self, device: str, refusal: Refusal, n: int, seq: int | None = None) -> None:
        """Count ``n`` refusals and log one line per device per ``LOG_INTERVAL_S``."""
        at = self._monotonic()
        with self._lock:
            self._refused[refusal.reason] += n
            last, suppressed = self._logged.get(device, (None, 0))
            if last is not None and at - last < LOG_INTERVAL_S:
                self._logged[device] = (last, suppressed + n)
                return
            self._logged[device] = (at, 0)
            if len(self._logged) > 100_000:  # devices are bounded, but never this dict's size
                self._logged.clear()
        more = f" ({suppressed} more since the last line)" if suppressed else ""
        where = f" record {seq}" if seq is not None else ""
        log.warning(
            "telemetry from %s%s refused (%s): %s%s", device, where, refusal.reason,
            refusal.detail[:200], more,
        )  # fmt: skip

    def refused(self) -> dict[str, int]:
        """Refusals so far by reason."""
        with self._lock:
            return dict(self._refused)

    def _profile_ceiling(self, profile: str) -> float:
        ceiling = self._ceilings.get(profile)
        if ceiling is None:
            ceiling = self._ceilings[profile] = self._ceiling(profile)
        return ceiling
