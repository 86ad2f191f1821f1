"""The telemetry buffer (SQLite, WAL) and the window recorder that feeds it.

``TelemetryBuffer`` stores records until the hub acknowledges them;
``WindowRecorder`` is the serving path's ``TelemetrySink``.
"""

from __future__ import annotations

from edgefleet.agent.telemetry.buffer import (
    BudgetReport,
    BufferedRecord,
    BufferStats,
    Lease,
    RingEntry,
    TelemetryBuffer,
)
from edgefleet.agent.telemetry.recorder import (
    LiveStats,
    ModelRegistration,
    WindowRecorder,
    reference_from_json,
)

__all__ = [
    "BudgetReport",
    "BufferStats",
    "BufferedRecord",
    "Lease",
    "LiveStats",
    "ModelRegistration",
    "RingEntry",
    "TelemetryBuffer",
    "WindowRecorder",
    "reference_from_json",
]
