"""Values the telemetry buffer hands out: records, leases, ring entries, counters.

Plain frozen dataclasses; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class BufferedRecord:
    seq: int
    kind: str
    body: dict[str, Any]


@dataclass(frozen=True)
class Lease:
    """Records handed out for sending. ``covers_from``: every seq from there to
    ``last_seq`` is either in ``records`` or gone on purpose (merged, dropped).
    ``covers_from - 1`` is the buffer's acked seq: what a batch of this lease claims
    as its ``after_seq`` on the wire (nothing unacked lies below the lease)."""

    covers_from: int
    first_seq: int
    last_seq: int
    records: tuple[BufferedRecord, ...]
    expires_at: float


@dataclass(frozen=True)
class RingEntry:
    prediction_id: str
    model: str
    version: int
    predicted: str | None


@dataclass(frozen=True)
class BudgetReport:
    merges: int = 0
    dropped_records: int = 0
    dropped_requests: int = 0


@dataclass(frozen=True)
class BufferStats:
    records: int
    windows: int
    events: int
    body_bytes: int
    first_seq: int | None
    last_seq: int | None
    next_seq: int
    acked_seq: int
    open_windows: int
    dropped_records: int
    dropped_windows: int
    dropped_events: int
    dropped_requests: int
    merges: int
    size_bytes: int
    budget_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)
