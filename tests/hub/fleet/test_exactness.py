"""Fleet statistics equal the statistics of the pooled raw data, whatever the network did.

Twenty devices see different slices of one data set. Some go offline and come back with a
backlog whose hour is already rolled up (late windows re-open the rollup); some lose acks
and send the same records again. The merged fleet statistics must equal a single window
built from every row of every device: counts exactly, scores to 1e-9, each window once.
The storage tests run on both engines (``store_location``: SQLite and PostgreSQL).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tests.hub.fleet.fleetkit import MODEL, SimDevice, classify, fleet, reference

from edgefleet.core.drift import DriftReport, ReferenceProfile, WindowStats, score_window
from edgefleet.hub.fleet.aggregate import DriftQuery, FleetAggregator
from edgefleet.hub.fleet.ingest import FleetTelemetry
from edgefleet.hub.fleet.references import References
from edgefleet.hub.fleet.settings import FleetSettings

T0 = float(1_700_000_000 // 3600 * 3600)
WINDOW_S = 600.0
STEPS = 10
OFFLINE = range(0, 4)  # devices 0-3 offline for steps 2..6
LOSSY = range(4, 9)  # devices 4-8 lose every other ack


def pooled_window(profile: ReferenceProfile, rows: list[np.ndarray]) -> WindowStats:
    X = np.vstack(rows)
    w = WindowStats.empty(profile)
    w.update(X)
    w.update_outputs(classify(X))
    return w


def assert_same_counts(profile: ReferenceProfile, a: WindowStats, b: WindowStats) -> None:
    assert a.n == b.n
    for j in range(len(profile.features)):
        ca, cb = a.numeric_column(j), b.numeric_column(j)
        assert np.array_equal(ca.counts, cb.counts)
        assert (ca.n, ca.nan, ca.inf, ca.below, ca.above) == (
            cb.n,
            cb.nan,
            cb.inf,
            cb.below,
            cb.above,
        )
        assert ca.total == pytest.approx(cb.total, rel=1e-12, abs=1e-9)
        assert ca.m2 == pytest.approx(cb.m2, rel=1e-12)
        assert (ca.min, ca.max) == (cb.min, cb.max)
    oa, ob = a.output_column(), b.output_column()
    assert oa is not None and ob is not None
    assert np.array_equal(oa.counts, ob.counts)


def assert_same_scores(a: DriftReport, b: DriftReport) -> None:
    for fa, fb in zip(a.features, b.features, strict=True):
        assert fa.verdict == fb.verdict
        for attr in ("psi", "js", "wasserstein", "ks", "chi2", "chi2_pvalue", "ks_pvalue"):
            va, vb = getattr(fa, attr), getattr(fb, attr)
            assert va == pytest.approx(vb, abs=1e-9), (fa.name, attr)
    assert a.drift_share == b.drift_share
    assert a.prediction is not None and b.prediction is not None
    assert a.prediction.psi == pytest.approx(b.prediction.psi, abs=1e-9)


def simulate(
    tmp_path: Path, rng: np.random.Generator, profile: ReferenceProfile
) -> tuple[FleetTelemetry, list[SimDevice], float]:
    telemetry = FleetTelemetry(tmp_path / "fleet.db", FleetSettings())
    devices = fleet(["north", "south", "east", "west"], 5)
    shift = np.array([0.0, 0.0, 0.0, 0.3, 0.0, 0.0, 0.0, 0.0])
    now = T0
    for step in range(STEPS):
        start, end = T0 + step * WINDOW_S, T0 + (step + 1) * WINDOW_S
        now = end + 5.0
        for i, dev in enumerate(devices):
            rows = int(rng.integers(30, 80))
            X = rng.normal(size=(rows, 8)) + shift
            X[:, 5] *= 1.0 + 0.05 * i  # every device its own slice of the data
            dev.record(profile, X, start, end)
            if i in OFFLINE and 2 <= step <= 6:
                continue  # offline: the window waits in the device's buffer
            result = telemetry.ingest(dev.info, dev.unacked, now)
            assert result.stored + result.duplicates == len(dev.unacked)
            if i in LOSSY and step % 2 == 1:
                continue  # the ack never arrives: these records come again
            dev.ack(result.highest_contiguous_seq)
        telemetry.maintain(now)
    for dev in devices:  # everyone back online, buffers drained
        if dev.unacked:
            result = telemetry.ingest(dev.info, dev.unacked, now)
            dev.ack(result.highest_contiguous_seq)
        assert dev.unacked == []
    return telemetry, devices, now


def test_fleet_statistics_equal_pooled_raw_data(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    profile = reference(rng)
    telemetry, devices, now = simulate(tmp_path, rng, profile)
    counters = telemetry.db.counters()
    assert counters["duplicates"] > 0  # retransmissions really happened
    assert counters["rolled_up"] > 0
    telemetry.maintain(now + 2 * 3600)  # the last hour rolls up too
    counts = telemetry.store.count_windows()
    assert counts["raw_unrolled"] + counts["in_rollups"] == 20 * STEPS
    assert counts["raw_unrolled"] + counts["in_group_rollups"] == 20 * STEPS

    aggregator = FleetAggregator(telemetry.store, References(lambda m, v: profile))
    result = aggregator.query(DriftQuery(MODEL, by="device"), now + 2 * 3600)
    pooled = pooled_window(profile, [x for d in devices for x in d.rows])
    assert result.fleet.windows == 20 * STEPS  # no window counted twice
    assert result.fleet.totals.requests == pooled.n
    assert result.fleet.merged is not None and result.fleet.report is not None
    assert_same_counts(profile, result.fleet.merged, pooled)
    assert_same_scores(result.fleet.report, score_window(profile, pooled))
    for dev in devices:
        mine = result.groups[dev.info.id]
        assert mine.windows == STEPS
        assert mine.merged is not None
        assert_same_counts(profile, mine.merged, pooled_window(profile, dev.rows))

    # The fleet and group breakdowns read the group rollups: the same numbers again.
    by_group = aggregator.query(DriftQuery(MODEL, by="group"), now + 2 * 3600)
    assert by_group.fleet.windows == 20 * STEPS and by_group.fleet.devices == 20
    assert by_group.fleet.merged is not None and by_group.fleet.report is not None
    assert_same_counts(profile, by_group.fleet.merged, pooled)
    assert_same_scores(by_group.fleet.report, score_window(profile, pooled))
    for name, group in by_group.groups.items():
        members = [d for d in devices if d.info.group == name]
        assert (group.windows, group.devices) == (STEPS * len(members), len(members))
        assert group.merged is not None
        assert_same_counts(
            profile, group.merged, pooled_window(profile, [x for d in members for x in d.rows])
        )


@pytest.mark.parametrize("delay_s", [0.0, 60.0])
def test_windows_late_for_a_rolled_up_hour_reopen_it(
    store_location: Path | str, delay_s: float
) -> None:
    """Rolled up as they are stored (delay 0) or by maintenance later: the same rollups."""
    rng = np.random.default_rng(8)
    profile = reference(rng)
    telemetry = FleetTelemetry(store_location, FleetSettings(rollup_delay_s=delay_s))
    by_maintenance = 1 if delay_s else 0
    (dev,) = fleet(["a"], 1)
    X1, X2 = rng.normal(size=(200, 8)), rng.normal(size=(150, 8)) + 1.0
    dev.record(profile, X1, T0, T0 + 300)
    dev.ack(telemetry.ingest(dev.info, dev.unacked, T0 + 310).highest_contiguous_seq)
    assert telemetry.maintain(T0 + 2 * 3600).rolled_up == by_maintenance
    dev.record(profile, X2, T0 + 300, T0 + 600)  # same hour, arrives hours later
    telemetry.ingest(dev.info, dev.unacked, T0 + 5 * 3600)
    assert telemetry.maintain(T0 + 5 * 3600 + 100).rolled_up == by_maintenance
    counts = telemetry.store.count_windows()
    assert counts == {
        "raw_unrolled": 0,
        "raw_rolled": 2,
        "in_rollups": 2,
        "in_group_rollups": 2,
    }
    rows = telemetry.store.stats(MODEL, 1)
    assert len(rows) == 1 and rows[0].windows == 2  # one hour rollup holding both
    merged = WindowStats.from_bytes(rows[0].drift or b"")
    assert_same_counts(profile, merged, pooled_window(profile, [X1, X2]))


def test_a_batch_twice_in_one_commit_is_stored_and_rolled_up_once(
    store_location: Path | str,
) -> None:
    rng = np.random.default_rng(11)
    profile = reference(rng)
    telemetry = FleetTelemetry(store_location)
    (dev,) = fleet(["a"], 1)
    for k in range(3):
        dev.record(profile, rng.normal(size=(50, 8)), T0 + k * 60, T0 + (k + 1) * 60)
    first, second = telemetry.ingest_many([(dev.info, dev.unacked), (dev.info, dev.unacked)], T0)
    assert (first.stored, first.duplicates, second.stored, second.duplicates) == (3, 0, 0, 3)
    assert second.highest_contiguous_seq == 3
    assert telemetry.store.count_windows() == {
        "raw_unrolled": 0,
        "raw_rolled": 3,
        "in_rollups": 3,
        "in_group_rollups": 3,
    }
    [row] = telemetry.store.stats(MODEL, 1)
    merged = WindowStats.from_bytes(row.drift or b"")
    assert_same_counts(profile, merged, pooled_window(profile, dev.rows))


def test_decoded_rollups_kept_by_a_writer_never_hide_another_writers_windows(
    store_location: Path | str,
) -> None:
    """Each writer keeps the rollups it wrote decoded; a row changed since is read again."""
    rng = np.random.default_rng(12)
    profile = reference(rng)
    a = FleetTelemetry(store_location)
    b = FleetTelemetry(store_location)  # a second hub process on the same store
    (dev,) = fleet(["a"], 1)
    for k, writer in enumerate((a, b, a, a)):
        dev.record(profile, rng.normal(size=(40, 8)), T0 + k * 60, T0 + (k + 1) * 60)
        writer.ingest(dev.info, dev.unacked[-1:], T0 + 3600)  # same hour, same second
    assert a.store.cache.hits >= 1  # the last window reused a's own, unchanged rollup
    [row] = a.store.stats(MODEL, 1)
    assert row.windows == 4
    merged = WindowStats.from_bytes(row.drift or b"")
    assert_same_counts(profile, merged, pooled_window(profile, dev.rows))
    a.close()
    b.close()


def test_coarsening_and_retention_keep_totals_exact(store_location: Path | str) -> None:
    rng = np.random.default_rng(9)
    profile = reference(rng)
    settings = FleetSettings(
        raw_retention_s=3600.0,
        fine_retention_s=2 * 3600.0,
        coarse_retention_s=None,
        monitor_lookback_s=1800.0,
        maintenance_budget=7,  # several small steps, as the worker does them
    )
    telemetry = FleetTelemetry(store_location, settings)
    devices = fleet(["a", "b"], 2)
    now = T0
    for step in range(12):  # two days of 4-hourly windows
        start = T0 + step * 4 * 3600
        now = start + 4 * 3600
        for dev in devices:
            dev.record(profile, rng.normal(size=(40, 8)), start, start + 3600)
            dev.ack(telemetry.ingest(dev.info, dev.unacked, now).highest_contiguous_seq)
    later = now + 3 * 86400
    while telemetry.maintain(later).more:
        pass
    assert telemetry.store.count_windows()["raw_rolled"] == 0  # raw rows pruned
    rows = telemetry.store.stats(MODEL, 1)
    assert {r.level for r in rows} == {86400}  # everything coarsened to days
    assert sum(r.windows for r in rows) == 12 * len(devices)
    merged = WindowStats.merge_all([WindowStats.from_bytes(r.drift or b"") for r in rows])
    assert_same_counts(
        profile, merged, pooled_window(profile, [x for d in devices for x in d.rows])
    )

    # A retransmission of a pruned record is still a duplicate, not a second copy.
    first = devices[0]
    again = [first.record(profile, rng.normal(size=(5, 8)), T0, T0 + 60)]
    replay = [type(again[0])(1, again[0].kind, again[0].body)]
    result = telemetry.ingest(first.info, replay, later)
    assert (result.stored, result.duplicates) == (0, 1)


def test_restarted_store_still_dedupes(store_location: Path | str) -> None:
    rng = np.random.default_rng(10)
    profile = reference(rng)
    (dev,) = fleet(["a"], 1)
    for k in range(3):
        dev.record(profile, rng.normal(size=(20, 8)), T0 + k * 60, T0 + (k + 1) * 60)
    first = FleetTelemetry(store_location)
    assert first.ingest(dev.info, dev.unacked, T0 + 200).stored == 3
    first.close()
    second = FleetTelemetry(store_location)
    result = second.ingest(dev.info, dev.unacked, T0 + 300)
    assert (result.stored, result.duplicates, result.highest_contiguous_seq) == (0, 3, 3)
    counts = second.store.count_windows()  # stored once and rolled up once
    assert (counts["raw_rolled"], counts["in_rollups"], counts["in_group_rollups"]) == (3, 3, 3)
