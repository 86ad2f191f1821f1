"""The fleet store's ack: it passes a batch only when the batch follows on (``after_seq``).

Real SQLite fleet databases in a temp dir; batches as the hub service hands them over
(decoded ``TelemetryBatch``) or as bare records (an agent without ``after_seq``).
"""

from __future__ import annotations

import sqlite3
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.hub.fleet.fleetkit import MODEL, reference, window_record

from edgefleet.core.protocol import TelemetryBatch, TelemetryRecord
from edgefleet.core.protocol.telemetry import MAX_PENDING_SPANS, AckCursor
from edgefleet.hub.fleet.ingest import DeviceInfo, FleetTelemetry, IngestWorker
from edgefleet.hub.fleet.metrics import MetricsServer, collect, render_metrics

T0 = time.time() - 3600
DEV = DeviceInfo("pi-a", "east", "rpi4-arm64")
DAY = 86_400.0


def events(*seqs: int) -> list[TelemetryRecord]:
    return [TelemetryRecord(s, "event", {"model": "m", "state": "x", "at": 1.0}) for s in seqs]


def batch(seqs: list[int], after: int | None) -> TelemetryBatch:
    return TelemetryBatch.of(DEV.id, events(*seqs), after_seq=after)


def stored_seqs(path: Path, device: str = DEV.id) -> list[int]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT seq FROM fleet_records WHERE device = ? ORDER BY seq", (device,)
        ).fetchall()
    return [int(r[0]) for r in rows]


@pytest.fixture
def fleet_db(tmp_path: Path) -> Path:
    return tmp_path / "fleet.db"


def test_a_batch_after_a_lost_one_is_stored_but_not_acked_until_the_gap_fills(
    fleet_db: Path,
) -> None:
    t = FleetTelemetry(fleet_db)
    try:
        assert t.ingest(DEV, batch([1, 2, 3], None), T0).highest_contiguous_seq == 3
        # 4..6 lost on the way; 8..9 follows on from 6 (7 was merged on the device).
        ahead = t.ingest(DEV, batch([8, 9], 6), T0)
        assert (ahead.stored, ahead.highest_contiguous_seq) == (2, 3)
        assert t.store.ack_cursor(DEV.id) == AckCursor(3, ((6, 9),))
        # The agent resends from its lowest unacked record: 4..6 and 8..9 again.
        again = t.ingest(DEV, batch([4, 5, 6, 8, 9], 3), T0)
        assert (again.stored, again.duplicates, again.highest_contiguous_seq) == (3, 2, 9)
        assert stored_seqs(fleet_db) == [1, 2, 3, 4, 5, 6, 8, 9]
        assert t.store.ack_cursor(DEV.id) == AckCursor(9)
        assert t.db.counters()["batches_ahead_of_cursor"] == 1
    finally:
        t.close()


def test_the_missing_batch_alone_makes_the_cursor_jump_over_what_is_stored(
    fleet_db: Path,
) -> None:
    t = FleetTelemetry(fleet_db)
    try:
        t.ingest(DEV, batch([1], None), T0)
        assert t.ingest(DEV, batch([20, 21], 12), T0).highest_contiguous_seq == 1
        assert t.ingest(DEV, batch([13, 15], 11), T0).highest_contiguous_seq == 1
        assert t.store.ack_cursor(DEV.id) == AckCursor(1, ((11, 21),))  # merged spans
        assert t.ingest(DEV, batch([5, 11], 1), T0).highest_contiguous_seq == 21
        assert stored_seqs(fleet_db) == [1, 5, 11, 13, 15, 20, 21]
    finally:
        t.close()


def test_an_agent_without_after_seq_is_acked_as_before(fleet_db: Path) -> None:
    t = FleetTelemetry(fleet_db)
    try:
        assert t.ingest(DEV, events(1, 2), T0).highest_contiguous_seq == 2
        # Bare records (or a batch without the field): the highest seq, gaps or not.
        assert t.ingest(DEV, events(10, 11), T0).highest_contiguous_seq == 11
        assert t.ingest(DEV, batch([20], None), T0).highest_contiguous_seq == 20
        assert t.ingest(DEV, events(3), T0).highest_contiguous_seq == 20  # never lower
    finally:
        t.close()


def test_a_hub_without_a_cursor_for_the_device_takes_its_claim(fleet_db: Path) -> None:
    # A new fleet database (the old one lost): the device had 1..40 acked elsewhere.
    t = FleetTelemetry(fleet_db)
    try:
        assert t.ingest(DEV, batch([41, 42], 40), T0).highest_contiguous_seq == 42
    finally:
        t.close()


def test_pending_spans_survive_a_hub_restart(fleet_db: Path) -> None:
    t = FleetTelemetry(fleet_db)
    t.ingest(DEV, batch([1, 2], None), T0)
    t.ingest(DEV, batch([7, 8], 5), T0)
    t.close()
    t = FleetTelemetry(fleet_db)
    try:
        assert t.store.ack_cursor(DEV.id) == AckCursor(2, ((5, 8),))
        assert t.ingest(DEV, batch([3, 5], 2), T0).highest_contiguous_seq == 8
    finally:
        t.close()


def test_a_database_from_before_pending_spans_opens_and_works(fleet_db: Path) -> None:
    t = FleetTelemetry(fleet_db)
    t.ingest(DEV, batch([1, 2], None), T0)
    t.close()
    with sqlite3.connect(fleet_db) as conn:  # what an older hub left behind
        conn.execute("DROP TABLE fleet_pending_spans")
    t = FleetTelemetry(fleet_db)
    try:
        assert t.store.ack_cursor(DEV.id) == AckCursor(2)
        assert t.ingest(DEV, batch([9], 4), T0).highest_contiguous_seq == 2
        assert t.ingest(DEV, batch([3, 4], 2), T0).highest_contiguous_seq == 9
    finally:
        t.close()


def test_records_pruned_from_a_pending_span_do_not_hide_the_missing_batch(
    fleet_db: Path,
) -> None:
    t = FleetTelemetry(fleet_db)
    try:
        t.ingest(DEV, batch([1, 2], None), T0)
        t.ingest(DEV, batch([6, 7], 4), T0)  # 3..4 missing
        t.maintain(T0 + 3 * DAY)  # retention deletes every event row: pruned_through = 7
        assert stored_seqs(fleet_db) == []
        late = t.ingest(DEV, batch([3, 4, 6, 7], 2), T0 + 3 * DAY)
        # 3 and 4 are new (below pruned_through, but the cursor never covered them);
        # 6 and 7 were stored and pruned: duplicates.
        assert (late.stored, late.duplicates, late.highest_contiguous_seq) == (2, 2, 7)
        assert stored_seqs(fleet_db) == [3, 4]
    finally:
        t.close()


def test_a_device_cannot_open_unbounded_spans(fleet_db: Path) -> None:
    t = FleetTelemetry(fleet_db)
    try:
        t.ingest(DEV, batch([1], None), T0)
        for i in range(MAX_PENDING_SPANS):
            assert t.ingest(DEV, batch([10 * i + 12], 10 * i + 11), T0).stored == 1
        refused = t.ingest(DEV, batch([10_000], 9_999), T0)
        assert (refused.stored, refused.highest_contiguous_seq) == (0, 1)
        assert 10_000 not in stored_seqs(fleet_db)
        # A batch joining an existing span is still taken.
        assert t.ingest(DEV, batch([13], 12), T0).stored == 1
        assert t.db.counters()["batches_refused_spans_full"] == 1
    finally:
        t.close()


def test_cursor_counters_are_scraped_from_metrics_and_survive_a_restart(
    fleet_db: Path,
) -> None:
    t = FleetTelemetry(fleet_db)
    t.ingest(DEV, batch([1], None), T0)
    for i in range(MAX_PENDING_SPANS):  # each opens a span: ahead of the cursor
        t.ingest(DEV, batch([10 * i + 12], 10 * i + 11), T0)
    t.ingest(DEV, batch([10_000], 9_999), T0)  # one span too many: refused
    t.ingest(DEV, batch([2], 1), T0)  # follows on: counted in neither
    t.close()
    # A restarted hub: the counts live in the fleet database, not in the worker.
    t = FleetTelemetry(fleet_db)
    server = MetricsServer(lambda: render_metrics(collect(IngestWorker(t)))).start()
    try:
        url = f"http://127.0.0.1:{server.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            lines = set(response.read().decode().splitlines())
    finally:
        server.stop()
        t.close()
    ahead = f"edgefleet_hub_telemetry_ahead_of_cursor_batches_total {MAX_PENDING_SPANS}"
    assert ahead in lines
    assert "edgefleet_hub_telemetry_spans_full_batches_total 1" in lines
    assert "# TYPE edgefleet_hub_telemetry_spans_full_batches_total counter" in lines
    assert "# TYPE edgefleet_hub_telemetry_ahead_of_cursor_batches_total counter" in lines


def test_windows_of_a_batch_resent_around_a_gap_are_counted_once(fleet_db: Path) -> None:
    profile = reference(np.random.default_rng(5))
    rng = np.random.default_rng(6)
    windows = [
        window_record(s, profile, rng.normal(size=(50, 8)), T0 + 60 * s, T0 + 60 * s + 60)
        for s in (1, 2, 4, 5, 6)
    ]
    t = FleetTelemetry(fleet_db)
    try:
        t.ingest(DEV, TelemetryBatch.of(DEV.id, windows[:2]), T0)
        t.ingest(DEV, TelemetryBatch.of(DEV.id, windows[3:], after_seq=4), T0)  # 4 lost
        t.ingest(DEV, TelemetryBatch.of(DEV.id, windows[2:], after_seq=2), T0)  # resent
        counts = t.store.count_windows()
        assert counts["in_rollups"] == 5 and counts["in_group_rollups"] == 5
        assert sum(s.totals().requests for s in t.store.stats(MODEL, 1, per_device=True)) == 250
        assert t.store.cursor(DEV.id) == 6
    finally:
        t.close()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_random_delivery_over_the_real_store_acks_only_stored_records(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    seqs = sorted(data.draw(st.sets(st.integers(1, 60), min_size=1, max_size=25)))
    cuts = sorted(data.draw(st.sets(st.integers(1, len(seqs)), max_size=6)) | {len(seqs)})
    # Honest batches, cut from the stream: each follows on from the previous one's end.
    batches, start, after = [], 0, 0
    for cut in cuts:
        if cut > start:
            batches.append(batch(seqs[start:cut], after))
            after, start = seqs[cut - 1], cut
    delivered = data.draw(st.lists(st.sampled_from(range(len(batches))), max_size=3 * len(batches)))
    path = tmp_path_factory.mktemp("fleet") / "fleet.db"
    t = FleetTelemetry(path)
    try:
        # A sender keeps its first batch alone in flight until it is acked (a hub without a
        # cursor for the device takes any batch as following on): record 0 here.
        assert t.ingest(DEV, batch([0], None), T0).highest_contiguous_seq == 0
        seqs = [0, *seqs]
        for i in delivered:  # lost, duplicated, reordered
            ack = t.ingest(DEV, batches[i], T0).highest_contiguous_seq
            held = set(stored_seqs(path))
            assert ack is None or all(s in held for s in seqs if s <= ack)
        # The device resends from its lowest unacked record until all is acked.
        acked = t.store.cursor(DEV.id)
        assert acked is not None
        rest = [s for s in seqs if s > acked]
        if rest:
            ack = t.ingest(DEV, batch(rest, acked), T0).highest_contiguous_seq
            assert ack == seqs[-1]
        assert stored_seqs(path) == seqs
    finally:
        t.close()
