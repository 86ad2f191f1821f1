"""The console's drift board: the aggregator's verdicts, kept current from new windows only.

A board built once and then fed the windows received since must score every scope as a
board built from scratch does (and as ``FleetAggregator`` does for the same windows), the
per-device heat map comes a page at a time, drifting devices first, and the model index
names what a full scan of the windows names.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.hub.fleet.fleetkit import DRIFTED, MODEL, N_FEATURES, SimDevice, build_fleet, reference

from edgefleet.core.drift import ReferenceProfile
from edgefleet.hub.config import HubConfig, StoreSettings
from edgefleet.hub.console.drift_board import DriftBoard, DriftSnapshot
from edgefleet.hub.console.fleet_access import FleetView, open_view
from edgefleet.hub.console.fleet_index import models_and_versions
from edgefleet.hub.console.service import FleetConsole
from edgefleet.hub.fleet.aggregate import DriftQuery, FleetAggregator
from edgefleet.hub.fleet.ingest import DeviceInfo, FleetTelemetry
from edgefleet.hub.fleet.settings import FleetSettings
from edgefleet.hub.store import SqliteHubStore


@pytest.fixture(scope="module")
def profile() -> ReferenceProfile:
    return reference(np.random.default_rng(5))


@pytest.fixture
def db(tmp_path: Path, profile: ReferenceProfile) -> Path:
    path = tmp_path / "hub.fleet.db"
    build_fleet(path, profile, 5, np.random.default_rng(3))
    return path


@pytest.fixture
def view(db: Path) -> Iterator[FleetView]:
    view = open_view(db, None, None)
    yield view
    view.db.close()


def _board(view: FleetView) -> DriftBoard:
    return DriftBoard(lambda: view, background=False)


def _close(a: Any, b: Any, path: str = "") -> None:
    """Equal, floats to 1e-9 (devices merged in another order round differently)."""
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12), path
    else:
        assert a == b, path


def _same(board: DriftSnapshot, fresh: DriftSnapshot) -> None:
    _close(board.fleet, fresh.fleet, "fleet")
    for kind in ("group", "profile", "device"):
        assert board.order[kind] == fresh.order[kind]
        for name in board.order[kind]:
            _close(board.selected(kind, name), fresh.selected(kind, name), f"{kind} {name}")


def test_the_board_scores_as_the_aggregator_does(view: FleetView) -> None:
    snap = _board(view).snapshot(MODEL, 1, None)
    assert snap is not None
    assert sorted(snap.drifting("device", 100)) == sorted(DRIFTED)
    assert list(snap.drifting("group", 100)) == ["east"]
    aggregator = FleetAggregator(view.store, view.references, view.thresholds)
    for kind in ("group", "device"):
        result = aggregator.query(DriftQuery(MODEL, 1, kind, None), time.time()).to_dict()
        _close(snap.fleet, result["fleet"], "fleet")
        assert sorted(snap.order[kind]) == sorted(result["groups"])
        for name, scope in result["groups"].items():
            _close(snap.selected(kind, name), scope, f"{kind} {name}")
        assert [p["rows"] for p in snap.timeline] == [p["rows"] for p in result["timeline"]]


def test_new_windows_update_the_board_as_a_rebuild_would(
    db: Path, view: FleetView, profile: ReferenceProfile
) -> None:
    board = _board(view)
    before = board.snapshot(MODEL, 1, None)
    assert before is not None and "west-d03" not in before.drifting("device", 100)
    # One clean device starts to drift, one moves group, one device is new.
    telemetry = FleetTelemetry(db, FleetSettings())
    rng = np.random.default_rng(9)
    start = time.time() - 600
    for info, shift in (
        (DeviceInfo("west-d03", "west", "rpi4-arm64"), 3.0),
        (DeviceInfo("north-d00", "south", "rpi4-arm64"), 0.0),
        (DeviceInfo("new-d00", "new", "x86_64-gateway"), 0.0),
    ):
        device = SimDevice(info, next_seq=100)
        for k in range(4):
            X = rng.normal(size=(300, N_FEATURES))
            X[:, :6] += shift
            device.record(profile, X, start + 60 * k, start + 60 * (k + 1))
        telemetry.ingest(info, device.unacked, time.time())
    telemetry.close()

    after = board.snapshot(MODEL, 1, None)
    assert after is not None and after.fleet["windows"] == before.fleet["windows"] + 12
    assert "west-d03" in after.drifting("device", 100)
    assert "new" in after.order["group"] and "x86_64-gateway" in after.order["profile"]
    _same(after, _board(view).snapshot(MODEL, 1, None))  # type: ignore[arg-type]
    assert before.fleet["windows"] == 120  # a published snapshot never changes


def test_a_board_for_a_time_span_reads_only_its_windows(view: FleetView) -> None:
    everything = _board(view).snapshot(MODEL, 1, None)
    recent = _board(view).snapshot(MODEL, 1, 86400.0)
    assert everything is not None and recent is not None
    assert recent.since is not None and recent.since % 3600 == 0
    assert recent.fleet["windows"] == everything.fleet["windows"] == 120
    assert _board(view).snapshot(MODEL, 1, 60.0) is not None  # windows ended before: none
    empty = _board(view).snapshot(MODEL, 1, 60.0)
    assert empty is not None and empty.fleet["windows"] == 0 and empty.order["device"] == []


def test_the_index_names_every_model_and_version_a_scan_names(
    db: Path, view: FleetView, profile: ReferenceProfile
) -> None:
    telemetry = FleetTelemetry(db, FleetSettings())
    device = SimDevice(DeviceInfo("east-d00", "east", "rpi4-arm64"), next_seq=50)
    now = time.time()
    for model, version in (("other", 3), (MODEL, 2), ("a", 1)):
        X = np.zeros((5, N_FEATURES))
        device.record(profile, X, now - 60, now, version=version, model=model)
    telemetry.ingest(device.info, device.unacked, now)
    telemetry.close()
    with view.db.read() as conn:
        found = models_and_versions(conn, view.db.buckets())
    assert found == {m: view.store.versions(m) for m in view.store.models()}
    assert found == {"a": [1], MODEL: [1, 2], "other": [3]}


def test_the_console_pages_the_device_heat_map_drifting_first(db: Path, tmp_path: Path) -> None:
    config = HubConfig(store=StoreSettings(path=tmp_path / "hub.db", bundles_dir=tmp_path / "b"))
    store = SqliteHubStore(config.store.path)
    try:
        console = FleetConsole(config, store, fleet_db=db)
        first = console.drift(MODEL, scope="device", since_s=None, limit=2)
        rest = console.drift(MODEL, scope="device", since_s=None, limit=50, offset=2)
        assert first["computing"] is False and first["devices_scored"] is True
        assert first["heatmap"]["total"] == rest["heatmap"]["total"] == 20
        names = [r["scope"] for r in first["heatmap"]["rows"] + rest["heatmap"]["rows"]]
        assert names[:3] == sorted(DRIFTED) and sorted(names) == sorted(set(names))
        assert len(names) == 20
        assert all(f"device {d}" in first["headline"] for d in DRIFTED)
        assert console.drift_models() == [{"model": MODEL, "versions": [1]}]
    finally:
        store.close()


def test_a_request_never_waits_for_the_board_beyond_its_wait(db: Path, tmp_path: Path) -> None:
    """Behind the API (answers kept), the first request waits at most ``drift_wait_s``,
    then says ``computing``; once the board is built, the answer has its verdicts."""
    config = HubConfig(store=StoreSettings(path=tmp_path / "hub.db", bundles_dir=tmp_path / "b"))
    store = SqliteHubStore(config.store.path)
    console = FleetConsole(config, store, fleet_db=db, drift_cache_s=60.0, drift_wait_s=0.05)
    board = console._board
    release = threading.Event()
    build = board._build

    def slow_build(*args: Any) -> Any:
        release.wait(30)
        return build(*args)

    board._build = slow_build  # type: ignore[method-assign]
    try:
        first = console.drift(MODEL, scope="device", since_s=None)
        assert first["computing"] is True and first["devices_scored"] is False
        assert first["headline"].endswith("drift is being computed (this page refreshes by itself)")
        assert first["heatmap"]["rows"] == []
        release.set()
        assert board.wait_idle(30)
        done = console.drift(MODEL, scope="device", since_s=None)
        assert done["computing"] is False and done["as_of"] is not None
        drifting = sorted((s["kind"], s["name"]) for s in done["drifting"])
        assert drifting == sorted([("group", "east")] + [("device", d) for d in DRIFTED])
    finally:
        release.set()
        console.close()
        store.close()
