"""The console's indexed reads (one page in SQL, tallies for the overview, only a rollout's
devices) give the answers the full scan of every device row gives, on both engines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edgefleet.hub.config import HubConfig, StoreSettings
from edgefleet.hub.console import devices as dv
from edgefleet.hub.console.service import FleetConsole
from edgefleet.hub.store import DesiredAssignment, DeviceRecord, DirectiveRecord, HubStore

GROUPS = ("north", "south", None)


def _state(i: int) -> dict[str, Any]:
    if i % 7 == 3:
        return {"directive_error": f"directive rejected: unknown key {i % 2}"}
    if i % 7 == 5:
        return {"directive_error": "", "note": "directive_error is empty: not refusing"}
    if i % 11 == 6:
        return {"directive_error": None}
    if i % 5 == 0:
        return {}
    version = 1 + i % 3
    return {"models": [{"name": "m", "active": {"version": version}, "deployment": None}]}


def _fleet(store: HubStore) -> list[str]:
    ids = [f"dev-{i:02d}" for i in range(40)] + ["Dev_X", "dev%y", "z!z"]
    with store.transaction():
        for i, device_id in enumerate(ids):
            store.add_device(
                DeviceRecord(
                    device_id=device_id,
                    profile="rpi4-arm64" if i % 2 else "x86_64-gateway",
                    password_hash="$7$x",
                    created_at=1.0,
                    group=GROUPS[i % 3],
                    online=i % 4 != 0,
                    last_seen=2.0,
                    state=_state(i),
                )
            )
        for i in range(0, 40, 4):
            assignment = DesiredAssignment("m", "a" * 64, 2, 10, "r-1")
            store.set_assignment(ids[i], "m", assignment, 3.0)
            store.record_directive(DirectiveRecord(ids[i], 1, 3.0, 99.0, 1, {}))
            store.record_directive(DirectiveRecord(ids[i], 2, 4.0, 99.0, 2, {}, 5.0))
    return ids


@pytest.fixture
def console(any_store: HubStore, tmp_path: Path) -> FleetConsole:
    _fleet(any_store)
    config = HubConfig(store=StoreSettings(path=tmp_path / "hub.db", bundles_dir=tmp_path / "b"))
    return FleetConsole(config, any_store, clock=lambda: 10.0, fleet_db=tmp_path / "none.db")


FILTERS = [
    dv.DeviceFilter(),
    dv.DeviceFilter(group="north"),
    dv.DeviceFilter(group=""),
    dv.DeviceFilter(profile="rpi4-arm64", online=True),
    dv.DeviceFilter(online=False),
    dv.DeviceFilter(search="DEV_"),
    dv.DeviceFilter(search="%"),
    dv.DeviceFilter(search="!"),
    dv.DeviceFilter(search="1"),
    dv.DeviceFilter(group="south", search="dev-1"),
]
PAGES = [dv.PageRequest(100, 0), dv.PageRequest(7, 0), dv.PageRequest(7, 14), dv.PageRequest(5, 40)]


@pytest.mark.parametrize("f", FILTERS)
def test_a_page_from_sql_is_the_page_of_every_row(
    console: FleetConsole, f: dv.DeviceFilter
) -> None:
    for p in PAGES:
        assert console.devices(f, p) == {**dv.page(console.device_rows(f), p), "now": 10.0}


def test_the_overview_counts_what_every_row_says(console: FleetConsole) -> None:
    rows = console.device_rows(dv.DeviceFilter())
    states: dict[str, int] = {}
    for r in rows:
        states[r["state"]] = states.get(r["state"], 0) + 1
    online = sum(1 for r in rows if r["online"])
    overview = console.overview()
    assert overview["devices"] == {
        "total": len(rows),
        "online": online,
        "offline": len(rows) - online,
    }
    assert overview["states"] == states
    assert set(states) == {"refusing", "updating", "in_sync", "unassigned"}
    assert overview["refusing"] == [r["device"] for r in rows if r["state"] == "refusing"][:20]
    assert overview["groups"] == dv.group_summaries(rows)


def test_profiles_of_a_few_devices(any_store: HubStore) -> None:
    ids = _fleet(any_store)
    assert any_store.profiles_of([ids[1], ids[2], "nobody", ids[1]]) == {
        ids[1]: "rpi4-arm64",
        ids[2]: "x86_64-gateway",
    }
    many = any_store.profiles_of(ids * 30)  # more ids than one statement takes
    assert sorted(many) == sorted(ids)
    assert any_store.directive_heads_of(ids) == any_store.directive_heads()
    assert any_store.assignments_of(ids) == any_store.all_assignments()
