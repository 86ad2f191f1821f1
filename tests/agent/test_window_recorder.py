"""The window recorder: per-version windows, feedback joins, restore after restart, kill -9."""

from __future__ import annotations

import base64
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from edgefleet.agent.telemetry import ModelRegistration, TelemetryBuffer, WindowRecorder
from edgefleet.agent.telemetry_sink import TelemetrySink
from edgefleet.core.drift import ReferenceProfile, WindowStats
from edgefleet.core.testing.clock import FakeClock

FEATURES = ["a", "b", "c", "d"]


def reference() -> ReferenceProfile:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 4))
    y = rng.integers(0, 3, size=400)
    return ReferenceProfile.build(X, FEATURES, outputs=y, output_kind="class")


def registration(version: int = 1) -> ModelRegistration:
    return ModelRegistration("iris", version, "classification", (0, 1, 2), reference())


def batch(n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 4)).astype(np.float32), rng.integers(0, 3, size=n)


@pytest.fixture
def setup(tmp_path: Path) -> tuple[TelemetryBuffer, WindowRecorder, FakeClock]:
    clock = FakeClock(1_000_000.0)
    buf = TelemetryBuffer(tmp_path / "telemetry.db", 4 << 20)
    rec = WindowRecorder(buf, 60, clock=clock)
    rec.register_model(registration())
    return buf, rec, clock


def test_recorder_is_a_telemetry_sink(
    setup: tuple[TelemetryBuffer, WindowRecorder, FakeClock],
) -> None:
    assert isinstance(setup[1], TelemetrySink)


def test_window_accounting(setup: tuple[TelemetryBuffer, WindowRecorder, FakeClock]) -> None:
    buf, rec, clock = setup
    X, y = batch(10)
    rec.record_inference("iris", 1, X, y, 3.0, [f"p{i}" for i in range(10)])
    rec.record_inference("iris", 1, X[:2], y[:2], 700.0, ["q0", "q1"])
    rec.record_error("iris", 1, "shape")
    rec.record_error("iris", None, "runtime")  # version resolved to the active one
    rec.record_error("nope", None, "name")  # never registered: not a window
    rec.flush()
    assert buf.records() == []  # the window is still open
    [open_body] = buf.open_windows()
    assert open_body["requests"] == 4
    clock.advance(60)
    [seq] = rec.flush()
    [record] = buf.records()
    body = record.body
    assert record.seq == seq and record.kind == "window"
    assert body["start_s"] == 999_960.0 and body["end_s"] == 1_000_020.0  # aligned to 60 s
    assert body["requests"] == 4
    assert body["errors"] == {"runtime": 1, "shape": 1}
    assert body["schema_violations"] == 1
    assert sum(body["latency_ms"]["counts"]) == 2
    assert body["predictions"] == {
        str(k): int(v)
        for k, v in zip(*np.unique(np.concatenate([y, y[:2]]), return_counts=True), strict=True)
    }
    drift = WindowStats.from_bytes(base64.b64decode(body["drift"]))
    assert drift.n == 12
    assert rec.unattributed_errors == {"name": 1}
    assert buf.open_windows() == []


def test_feedback_joins_labels_once(tmp_path: Path) -> None:
    clock = FakeClock(1_000_000.0)
    buf = TelemetryBuffer(tmp_path / "t.db", 4 << 20)
    rec = WindowRecorder(buf, 60, clock=clock)
    rec.register_model(registration())
    X, _ = batch(3)
    rec.record_inference("iris", 1, X, np.array([0, 1, 2]), 1.0, ["a", "b", "c"])
    assert rec.record_feedback("iris", "a", 0) is True
    assert rec.record_feedback("iris", "a", 0) is False  # one label per prediction
    assert rec.record_feedback("other", "b", 1) is False  # wrong model
    assert rec.record_feedback("iris", "zzz", 1) is False  # unknown id
    rec.flush()
    # a new recorder (after a restart) finds the ids in the persisted ring
    rec2 = WindowRecorder(buf, 60, clock=clock)
    rec2.register_model(registration())
    rec2.restore()
    assert rec2.record_feedback("iris", "b", "2") is True  # labels arrive as text too
    assert rec2.record_feedback("iris", "c", 2) is True
    clock.advance(60)
    rec2.flush()
    [record] = buf.records()
    confusion = record.body["confusion"]
    assert confusion["labels"] == [0, 1, 2]
    matrix = np.array(confusion["matrix"])
    assert matrix.sum() == 3 and matrix[0, 0] == 1 and matrix[2, 1] == 1 and matrix[2, 2] == 1


def test_restart_inside_a_window_resumes_it(tmp_path: Path) -> None:
    clock = FakeClock(1_000_000.0)
    path = tmp_path / "t.db"
    buf = TelemetryBuffer(path, 4 << 20)
    rec = WindowRecorder(buf, 60, clock=clock)
    rec.register_model(registration())
    X, y = batch(5)
    rec.record_inference("iris", 1, X, y, 1.0, list("abcde"))
    rec.flush()
    buf.close()  # the process ends (a crash would leave the same file)

    buf = TelemetryBuffer(path, 4 << 20)
    rec = WindowRecorder(buf, 60, clock=clock)
    rec.register_model(registration())
    assert rec.restore() == 1
    rec.record_inference("iris", 1, X, y, 1.0, list("fghij"))
    clock.advance(60)
    rec.flush()
    [record] = buf.records()
    assert record.body["requests"] == 2
    assert WindowStats.from_bytes(base64.b64decode(record.body["drift"])).n == 10


def test_restart_after_the_window_closes_it(tmp_path: Path) -> None:
    clock = FakeClock(1_000_000.0)
    path = tmp_path / "t.db"
    buf = TelemetryBuffer(path, 4 << 20)
    rec = WindowRecorder(buf, 60, clock=clock)
    rec.register_model(registration())
    X, y = batch(5)
    rec.record_inference("iris", 1, X, y, 1.0, list("abcde"))
    rec.flush()
    clock.advance(3600)
    rec2 = WindowRecorder(buf, 60, clock=clock)
    assert rec2.restore() == 0
    rec2.flush()
    [record] = buf.records()
    assert record.body["requests"] == 1
    assert buf.open_windows() == []


def test_probation_counters(setup: tuple[TelemetryBuffer, WindowRecorder, FakeClock]) -> None:
    _, rec, _ = setup
    X, y = batch(1)
    rec.record_inference("iris", 1, X, y, 5.0, ["x"])  # before probation: not counted
    rec.start_probation("iris", 1)
    for i in range(19):
        rec.record_inference("iris", 1, X, y, float(i + 1), [f"p{i}"])
    rec.record_error("iris", 1, "runtime")
    stats = rec.probation_stats("iris", 1)
    assert stats.requests == 20 and stats.errors == 1
    assert stats.error_rate == pytest.approx(0.05)
    # counted in the window buckets: 9 of 19 in (10, 20], p95 interpolated in it
    assert stats.p95_latency_ms == pytest.approx(10 + 10 * (0.95 * 19 - 10) / 9)
    rec.stop_probation("iris", 1)
    assert rec.probation_stats("iris", 1).requests == 0


KILLED = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from pathlib import Path
    from edgefleet.agent.telemetry import TelemetryBuffer, WindowRecorder, ModelRegistration
    from edgefleet.core.drift import ReferenceProfile
    rng = np.random.default_rng(0)
    ref = ReferenceProfile.build(rng.normal(size=(400, 4)), list("abcd"),
                                 outputs=rng.integers(0, 3, size=400), output_kind="class")
    buf = TelemetryBuffer(Path(sys.argv[1]), 4 << 20)
    rec = WindowRecorder(buf, 3600)
    rec.register_model(ModelRegistration("iris", 1, "classification", (0, 1, 2), ref))
    X = rng.normal(size=(1, 4)).astype(np.float32)
    total = 0
    last = time.monotonic()
    while True:
        rec.record_inference("iris", 1, X, np.array([1]), 1.0, [f"id{total}"])
        total += 1
        if time.monotonic() - last > 0.05:
            rec.flush()
            last = time.monotonic()
            print("F", total, flush=True)
    """
)


@pytest.mark.subprocess
def test_kill_9_loses_at_most_the_unflushed_accounting(tmp_path: Path) -> None:
    path = tmp_path / "telemetry.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED, str(path)], stdout=subprocess.PIPE, text=True
    )
    flushed = 0
    flushes = 0
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            flushed = int(line.split()[1])
            flushes += 1
            if flushes >= 8:
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    buf = TelemetryBuffer(path, 4 << 20)
    try:
        assert buf.integrity_ok()
        persisted = sum(b["requests"] for b in buf.open_windows())
        persisted += sum(r.body["requests"] for r in buf.records())
        # everything flushed before the kill is there; at most one more flush landed
        assert persisted >= flushed
        assert buf.lookup_prediction(f"id{flushed - 1}") is not None
    finally:
        buf.close()


def test_batched_reports_account_like_single_reports(tmp_path: Path) -> None:
    """record_inferences (one call per event-loop pass) == one record_inference per request."""
    clock = FakeClock(1_000_000.0)
    single = WindowRecorder(TelemetryBuffer(tmp_path / "a.db", 4 << 20), 60, clock=clock)
    batched = WindowRecorder(TelemetryBuffer(tmp_path / "b.db", 4 << 20), 60, clock=clock)
    for rec in (single, batched):
        rec.register_model(registration())
    X, y = batch(750)
    latencies = [0.1 * (i % 50) for i in range(300)]
    # 300 requests of 1 to 4 rows, reported in passes of 1 to 7 requests
    bounds = np.cumsum([0] + [1 + i % 4 for i in range(300)])
    ids = [f"r{i}" for i in range(int(bounds[-1]))]
    for i in range(300):
        a, b = int(bounds[i]), int(bounds[i + 1])
        single.record_inference("iris", 1, X[a:b], y[a:b], latencies[i], ids[a:b])
    i = 0
    while i < 300:
        j = min(300, i + 1 + i % 7)
        a, b = int(bounds[i]), int(bounds[j])
        batched.record_inferences("iris", 1, X[a:b], y[a:b], latencies[i:j], ids[a:b])
        i = j
    # labels for predictions not flushed yet are joined from memory
    assert batched.record_feedback("iris", ids[5], int(y[5])) is True
    assert batched.record_feedback("iris", ids[5], int(y[5])) is False
    clock.advance(60)
    bodies = []
    for rec in (single, batched):
        rec.flush()
        [record] = rec.buffer.records()
        bodies.append(record.body)
    a_body, b_body = bodies
    for key in ("requests", "latency_ms", "predictions", "errors"):
        assert a_body[key] == b_body[key]
    assert a_body["requests"] == 300 and b_body["confusion"]["matrix"] is not None
    da, db = (WindowStats.from_bytes(base64.b64decode(b["drift"])) for b in bodies)
    assert da.rows == db.rows == bounds[-1]
    assert np.array_equal(da.ints, db.ints)  # every bin count is exact
    assert np.allclose(da.adds, db.adds) and np.allclose(da.m2, db.m2)
    # every prediction id reached the persisted ring, in order, with its label
    for rec in (single, batched):
        assert rec.buffer.lookup_prediction(ids[-1]) is not None
        entry = rec.buffer.lookup_prediction(ids[7])
        assert entry is not None and entry.predicted == str(int(y[7])) and entry.version == 1


def test_ring_keeps_model_versions_apart_across_flushes(tmp_path: Path) -> None:
    clock = FakeClock(1_000_000.0)
    rec = WindowRecorder(TelemetryBuffer(tmp_path / "t.db", 4 << 20), 60, clock=clock)
    rec.register_model(registration(1))
    rec.register_model(registration(2))
    X, y = batch(6)
    rec.record_inferences("iris", 1, X[:2], y[:2], [1.0], ["a", "b"])
    rec.record_inferences("iris", 2, X[2:4], y[2:4], [1.0, 2.0], ["c", "d"])
    rec.record_inferences("iris", 1, X[4:], y[4:], [1.0], ["e", "f"])
    rec.flush()
    rec.record_inferences("iris", 2, X[:1], y[:1], [1.0], ["g"])
    versions = {}
    for pid in "abcdef":
        entry = rec.buffer.lookup_prediction(pid)
        assert entry is not None
        versions[pid] = entry.version
    assert versions == {"a": 1, "b": 1, "c": 2, "d": 2, "e": 1, "f": 1}
    assert rec.buffer.lookup_prediction("g") is None  # not flushed yet ...
    rec.record_inferences("iris", 2, X[1:2], y[1:2], [1.0], ["h"])
    assert rec.record_feedback("iris", "g", int(y[0])) is True  # ... but known in memory
    rec.flush()
    assert rec.buffer.lookup_prediction("g") is None  # labelled: it takes no second label
    assert rec.record_feedback("iris", "g", int(y[0])) is False
    entry = rec.buffer.lookup_prediction("h")
    assert entry is not None and entry.version == 2
