"""The hub's inbound group notes its telemetry batches' devices as seen in one transaction,
on both engines: last seen never moves backwards, whatever order the group holds them in."""

from __future__ import annotations

from edgefleet.hub.store import DeviceRecord, HubStore


def test_a_group_of_devices_is_touched_once_and_never_backwards(any_store: HubStore) -> None:
    for device in ("pi-1", "pi-2"):
        any_store.add_device(DeviceRecord(device, "rpi4-arm64", "$7$1$a$b", 1.0))
    with any_store.transaction():
        any_store.touch_devices([("pi-2", 21.0), ("pi-1", 20.0), ("pi-2", 19.0)])
    pi1, pi2 = any_store.get_device("pi-1"), any_store.get_device("pi-2")
    assert pi1 is not None and pi1.last_seen == 20.0
    assert pi2 is not None and pi2.last_seen == 21.0  # never moved backwards
    any_store.touch_devices([("pi-1", 5.0)])
    again = any_store.get_device("pi-1")
    assert again is not None and again.last_seen == 20.0
