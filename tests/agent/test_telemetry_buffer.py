"""The SQLite telemetry buffer: seqs, leases, acks, open windows, the ring, crash safety."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edgefleet.agent.errors import TelemetryBufferError
from edgefleet.agent.telemetry.buffer import RingEntry, TelemetryBuffer

BUDGET = 1 << 20


def event(i: int) -> dict[str, object]:
    return {
        "model": "iris",
        "version": 1,
        "state": "committed",
        "reason": f"r{i}",
        "at": 1000.0 + i,
    }


@pytest.fixture
def buffer(tmp_path: Path) -> TelemetryBuffer:
    buf = TelemetryBuffer(tmp_path / "telemetry.db", BUDGET, ring_size=4, first_seq=1)
    yield buf
    buf.close()


def test_wal_mode_and_strictly_increasing_seqs(buffer: TelemetryBuffer) -> None:
    seqs = [buffer.append("event", event(i)) for i in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    with sqlite3.connect(buffer.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert [r.body["reason"] for r in buffer.records()] == [f"r{i}" for i in range(5)]


def test_unknown_kind_and_non_json_body_are_refused(buffer: TelemetryBuffer) -> None:
    with pytest.raises(TelemetryBufferError):
        buffer.append("gossip", event(0))
    with pytest.raises(TelemetryBufferError):
        buffer.append("event", {"at": float("nan")})
    assert buffer.records() == []


def test_lease_ack_cycle(buffer: TelemetryBuffer) -> None:
    for i in range(10):
        buffer.append("event", event(i))
    lease = buffer.lease(now=0.0, max_records=4)
    assert lease is not None
    assert [r.seq for r in lease.records] == [1, 2, 3, 4]
    assert (lease.covers_from, lease.first_seq, lease.last_seq) == (1, 1, 4)
    # one lease at a time
    assert buffer.lease(now=1.0) is None
    # unacked: after expiry the same records go out again
    again = buffer.lease(now=lease.expires_at + 1, max_records=4)
    assert again is not None and [r.seq for r in again.records] == [1, 2, 3, 4]
    assert buffer.ack(4) == 4
    nxt = buffer.lease(now=lease.expires_at + 2, max_records=100)
    assert nxt is not None and nxt.first_seq == 5 and nxt.covers_from == 5
    assert [r.seq for r in buffer.records()] == list(range(5, 11))


def test_ack_is_clamped_to_what_was_shipped(buffer: TelemetryBuffer) -> None:
    for i in range(6):
        buffer.append("event", event(i))
    lease = buffer.lease(now=0.0, max_records=2)
    assert lease is not None and lease.last_seq == 2
    assert buffer.ack(1_000) == 2  # the hub cannot ack what it never got
    assert [r.seq for r in buffer.records()] == [3, 4, 5, 6]
    assert buffer.ack(1) == 0  # old acks are harmless


def test_acked_seqs_are_never_reused_after_reopen(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    buf = TelemetryBuffer(path, BUDGET, first_seq=1)
    for i in range(3):
        buf.append("event", event(i))
    lease = buf.lease(now=0.0)
    assert lease is not None
    buf.ack(lease.last_seq)
    buf.close()
    buf = TelemetryBuffer(path, BUDGET, first_seq=1)
    assert buf.records() == []
    assert buf.append("event", event(9)) == 4
    stats = buf.stats()
    assert stats.acked_seq == 3 and stats.next_seq == 5 and stats.records == 1
    buf.close()


def test_open_windows_close_atomically_into_records(buffer: TelemetryBuffer) -> None:
    body = {"model": "iris", "version": 1, "start_s": 0.0, "end_s": 60.0, "requests": 3}
    buffer.commit_flush([], [body])
    assert buffer.open_windows() == [body]
    assert buffer.records() == []
    closed = {**body, "requests": 5}
    [seq] = buffer.commit_flush([closed], [])
    assert buffer.open_windows() == []
    [record] = buffer.records()
    assert record.seq == seq and record.kind == "window" and record.body["requests"] == 5


def test_prediction_ring_is_bounded_and_forgets(buffer: TelemetryBuffer) -> None:
    entries = [RingEntry(f"p{i}", "iris", 1, str(i % 3)) for i in range(6)]
    buffer.commit_flush([], [], entries[:3])
    buffer.commit_flush([], [], entries[3:])
    assert buffer.lookup_prediction("p0") is None  # ring of 4: the two oldest went
    assert buffer.lookup_prediction("p1") is None
    assert buffer.lookup_prediction("p5") == entries[5]
    buffer.commit_flush([], [], (), ["p5"])
    assert buffer.lookup_prediction("p5") is None
    assert buffer.lookup_prediction("p4") == entries[4]


WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from edgefleet.agent.telemetry.buffer import TelemetryBuffer, RingEntry
    buf = TelemetryBuffer(Path(sys.argv[1]), 1 << 20, ring_size=100)
    i = 0
    while True:
        i += 1
        body = {"model": "iris", "version": 1, "start_s": float(i), "end_s": float(i + 1),
                "requests": i, "pad": "x" * 200}
        [seq] = buf.commit_flush([body], [{**body, "start_s": float(i + 1)}],
                                 [RingEntry(f"id{i}", "iris", 1, "0")])
        print("A", seq, flush=True)
        if i % 7 == 0:
            lease = buf.lease(now=float(i), max_records=5)
            if lease is not None:
                print("L", lease.last_seq, flush=True)
                buf.ack(lease.last_seq - 1)
                print("K", lease.last_seq - 1, flush=True)
                buf.release_lease()
    """
)


@pytest.mark.subprocess
@pytest.mark.parametrize("kill_after", [40, 300])
def test_kill_during_writes_loses_nothing_unacked(tmp_path: Path, kill_after: int) -> None:
    path = tmp_path / "telemetry.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    appended: list[int] = []
    acked = 0
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            tag, value = line.split()
            if tag == "A":
                appended.append(int(value))
            elif tag == "K":
                acked = int(value)
            if len(appended) >= kill_after:
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert len(appended) >= kill_after, "the writer died on its own"

    buf = TelemetryBuffer(path, 1 << 20)
    try:
        assert buf.integrity_ok()
        stats = buf.stats()
        assert stats.acked_seq >= acked
        remaining = {r.seq for r in buf.records()}
        # acked data never returns
        assert all(seq > stats.acked_seq for seq in remaining)
        # unacked data never vanishes
        assert {s for s in appended if s > stats.acked_seq} <= remaining
        # the open window survived too, and seqs keep increasing
        assert len(buf.open_windows()) >= 1
        assert buf.append("event", event(0)) > max(appended)
        lease = buf.lease(now=1e9, max_records=10_000, max_bytes=1 << 30)
        assert lease is not None and lease.covers_from == stats.acked_seq + 1
        assert all(json.loads(json.dumps(r.body)) == r.body for r in lease.records)
    finally:
        buf.close()
