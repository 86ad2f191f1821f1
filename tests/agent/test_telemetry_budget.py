"""Storage budget: feed windows past the budget; the store stays under it, coarsened
totals equal the originals exactly, and drops are counted."""

from __future__ import annotations

import base64
from collections import Counter
from pathlib import Path

import numpy as np

from edgefleet.agent.telemetry import ModelRegistration, TelemetryBuffer, WindowRecorder
from edgefleet.agent.telemetry.coarsening import RecordMeta, plan_budget
from edgefleet.core.drift import ConfusionCounts, ReferenceProfile, WindowStats
from edgefleet.core.testing.clock import FakeClock

BUDGET = 128 * 1024
WINDOW_S = 10


def reference() -> ReferenceProfile:
    rng = np.random.default_rng(0)
    return ReferenceProfile.build(
        rng.normal(size=(500, 6)),
        [f"f{i}" for i in range(6)],
        outputs=rng.integers(0, 3, size=500),
        output_kind="class",
    )


def feed(tmp_path: Path, windows: int, *, ship: bool) -> tuple[TelemetryBuffer, dict[str, object]]:
    clock = FakeClock(1_700_000_000.0)
    buffer = TelemetryBuffer(tmp_path / "telemetry.db", BUDGET, ring_size=200)
    recorder = WindowRecorder(buffer, WINDOW_S, clock=clock)
    ref = reference()
    for version in (1, 2):
        recorder.register_model(ModelRegistration("m", version, "classification", (0, 1, 2), ref))
    rng = np.random.default_rng(1)
    totals: dict[str, object] = {
        "requests": Counter(),
        "rows": Counter(),
        "errors": Counter(),
        "latency": Counter(),
        "labels": Counter(),
        "predictions": Counter(),
    }
    ids = 0
    sizes = []
    for i in range(windows):
        for version in (1, 2) if i % 3 else (1,):
            n = int(rng.integers(1, 6))
            X = rng.normal(size=(n, 6)).astype(np.float32)
            y = rng.integers(0, 3, size=n)
            pids = [f"p{ids + k}" for k in range(n)]
            ids += n
            recorder.record_inference("m", version, X, y, float(rng.uniform(0.1, 50)), pids)
            recorder.record_error("m", version, "shape")
            assert recorder.record_feedback("m", pids[0], int(y[0]))
            totals["requests"][version] += 2  # type: ignore[index]
            totals["rows"][version] += n  # type: ignore[index]
            totals["errors"][version] += 1  # type: ignore[index]
            totals["latency"][version] += 1  # type: ignore[index]
            totals["labels"][version] += 1  # type: ignore[index]
            for label in y.tolist():
                totals["predictions"][(version, str(label))] += 1  # type: ignore[index]
        clock.advance(WINDOW_S)
        recorder.flush()
        if ship:
            buffer.release_lease()
            buffer.lease(now=clock(), max_records=10_000, max_bytes=1 << 30)
        buffer.enforce_budget()
        sizes.append(buffer.size_bytes())
    totals["max_size"] = max(sizes)
    return buffer, totals


def test_coarsening_keeps_totals_exact_and_the_store_under_budget(tmp_path: Path) -> None:
    buffer, totals = feed(tmp_path, 200, ship=False)
    try:
        stats = buffer.stats()
        assert totals["max_size"] <= BUDGET
        assert stats.merges > 0 and stats.dropped_records == 0
        windows = [r.body for r in buffer.records() if r.kind == "window"]
        assert any(w["merged"] > 1 for w in windows)
        for version in (1, 2):
            mine = [w for w in windows if w["version"] == version]
            assert sum(w["requests"] for w in mine) == totals["requests"][version]  # type: ignore[index]
            assert sum(sum(w["errors"].values()) for w in mine) == totals["errors"][version]  # type: ignore[index]
            assert sum(w["schema_violations"] for w in mine) == totals["errors"][version]  # type: ignore[index]
            assert sum(sum(w["latency_ms"]["counts"]) for w in mine) == totals["latency"][version]  # type: ignore[index]
            predictions: Counter[tuple[int, str]] = Counter()
            for w in mine:
                for label, count in w["predictions"].items():
                    predictions[(version, label)] += count
            expected = {k: v for k, v in totals["predictions"].items() if k[0] == version}  # type: ignore[union-attr]
            assert dict(predictions) == expected
            drift = WindowStats.merge_all(
                [WindowStats.from_bytes(base64.b64decode(w["drift"])) for w in mine]
            )
            assert drift.n == totals["rows"][version]  # type: ignore[index]
            confusion = [ConfusionCounts.from_dict(w["confusion"]) for w in mine if w["confusion"]]
            assert sum(c.n for c in confusion) == totals["labels"][version]  # type: ignore[index]
            # coarsened windows still tile time in order, never overlapping
            spans = sorted((w["start_s"], w["end_s"]) for w in mine)
            assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))
    finally:
        buffer.close()
    assert buffer.size_bytes() <= BUDGET


def test_drops_are_counted_when_nothing_can_merge(tmp_path: Path) -> None:
    # Shipped (leased, unacked) records are never merged: only dropping is left.
    buffer, totals = feed(tmp_path, 150, ship=True)
    try:
        stats = buffer.stats()
        assert totals["max_size"] <= BUDGET
        assert stats.dropped_records > 0 and stats.dropped_windows == stats.dropped_records
        kept = sum(r.body["requests"] for r in buffer.records() if r.kind == "window")
        total = sum(totals["requests"].values())  # type: ignore[union-attr]
        assert kept + stats.dropped_requests == total
        # the oldest went first
        assert buffer.records()[0].seq > 1
    finally:
        buffer.close()


def meta(seq: int, start: float, *, version: int = 1, shipped: bool = False) -> RecordMeta:
    return RecordMeta(seq, "window", "m", version, start, start + 10, 100, shipped)


def test_plan_prefers_short_old_pairs_and_never_mixes_versions() -> None:
    records = [meta(1, 0), meta(2, 10), meta(3, 0, version=2), meta(4, 20), meta(5, 30)]
    plan = plan_budget(records, excess_bytes=150)
    assert plan.merges == ((1, 2), (4, 5))
    assert plan.drops == ()


def test_plan_skips_shipped_records_and_then_drops_oldest_windows_first() -> None:
    records = [
        meta(1, 0, shipped=True),
        meta(2, 10, shipped=True),
        RecordMeta(3, "event", "m", 1, 15, 15, 50, False),
        meta(4, 20),
    ]
    plan = plan_budget(records, excess_bytes=150)
    assert plan.merges == ()
    assert plan.drops == (1, 2)
    assert plan_budget(records, 0).empty
