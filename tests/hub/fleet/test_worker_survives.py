"""The ingest worker survives whatever one record does, and says when it is stuck.

No screening here: records go straight to the worker, as they would if a future field
escaped the bounds. A window claiming ``requests = 2**63`` makes SQLite raise
``OverflowError`` inside the group commit; the worker must store every other batch and
every other record of the same batch, store the bad one as ``refused`` so the ack passes it,
and keep running. A worker held up by a lock on the fleet database shows as stalled.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
from tests.hub.fleet.fleetkit import reference, window_record
from tests.support.waiting import wait_until

from edgefleet.core.protocol import TelemetryBatch, TelemetryRecord
from edgefleet.hub.fleet.ingest import DeviceInfo, FleetTelemetry, IngestResult, IngestWorker

PROFILE = reference(np.random.default_rng(5))
T0 = time.time() - 3600


def windows(seqs: list[int]) -> list[TelemetryRecord]:
    rng = np.random.default_rng(seqs[0])
    return [
        window_record(s, PROFILE, rng.normal(size=(10, 8)), T0 + 60 * s, T0 + 60 * s + 60)
        for s in seqs
    ]


def poisoned(record: TelemetryRecord) -> TelemetryRecord:
    return TelemetryRecord(record.seq, record.kind, {**record.body, "requests": 2**63})


def kinds(db: Path) -> list[tuple[str, int, str]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT device, seq, kind FROM fleet_records ORDER BY device, seq"
        ).fetchall()


def test_a_record_that_breaks_the_commit_costs_only_itself(tmp_path: Path) -> None:
    telemetry = FleetTelemetry(tmp_path / "fleet.db")
    worker = IngestWorker(telemetry, max_batches_per_commit=8)
    results: dict[str, IngestResult] = {}
    done = threading.Event()

    def on_done(device: str) -> object:
        def record(result: IngestResult) -> None:
            results[device] = result
            if len(results) == 3:
                done.set()

        return record

    bad = windows([1, 2, 3])
    bad[1] = poisoned(bad[1])
    # Queued before the thread starts, so all three share one group commit.
    worker.submit(
        DeviceInfo("good-1"), TelemetryBatch.of("good-1", windows([1, 2])), on_done("good-1")
    )  # type: ignore[arg-type]
    worker.submit(DeviceInfo("bad"), TelemetryBatch.of("bad", bad), on_done("bad"))  # type: ignore[arg-type]
    worker.submit(
        DeviceInfo("good-2"), TelemetryBatch.of("good-2", windows([5])), on_done("good-2")
    )  # type: ignore[arg-type]
    worker.start()
    try:
        assert done.wait(30)
        assert results["good-1"].highest_contiguous_seq == 2
        assert results["good-2"].highest_contiguous_seq == 5
        assert results["bad"].highest_contiguous_seq == 3  # acked past the bad record
        assert worker.stats.isolated_records == 1
        assert kinds(tmp_path / "fleet.db") == [
            ("bad", 1, "window"),
            ("bad", 2, "refused"),
            ("bad", 3, "window"),
            ("good-1", 1, "window"),
            ("good-1", 2, "window"),
            ("good-2", 5, "window"),
        ]
        # Still alive: the next batch is stored and acked.
        again = threading.Event()
        worker.submit(DeviceInfo("good-1"), TelemetryBatch.of("good-1", windows([3])),
                      lambda r: again.set())  # fmt: skip
        assert again.wait(30)
        assert not worker.stalled
    finally:
        worker.stop()
        telemetry.close()


def test_a_worker_held_up_is_reported_stalled_until_it_moves_again(tmp_path: Path) -> None:
    telemetry = FleetTelemetry(tmp_path / "fleet.db")
    worker = IngestWorker(telemetry, stall_after_s=0.5).start()
    lock = sqlite3.connect(tmp_path / "fleet.db", isolation_level=None)
    try:
        assert not worker.stalled
        lock.execute("BEGIN IMMEDIATE")  # the worker's next commit waits on this lock
        stored = threading.Event()
        worker.submit(DeviceInfo("d"), TelemetryBatch.of("d", windows([1])), lambda r: stored.set())
        wait_until("the worker to report stalled", lambda: worker.stalled, 20)
        lock.execute("ROLLBACK")
        assert stored.wait(30)
        wait_until("the worker to recover after the lock went", lambda: not worker.stalled, 20)
    finally:
        lock.close()
        worker.stop()
        telemetry.close()
