"""Several devices' telemetry batches stored in one transaction (the hub's inbound group),
on both engines: retransmissions inside the group and below the retention mark are
skipped, the devices' last-seen moves, nothing fails."""

from __future__ import annotations

from tests.hub.hubkit import window

from edgefleet.hub.store import DeviceRecord, HubStore, TelemetryRow


def rows(seqs: range) -> list[TelemetryRow]:
    return [TelemetryRow(seq, "window", window("digits", 1, requests=5)) for seq in seqs]


def test_a_group_of_batches_is_stored_once_in_one_call(any_store: HubStore) -> None:
    for device in ("pi-1", "pi-2"):
        any_store.add_device(DeviceRecord(device, "rpi4-arm64", "$7$1$a$b", 1.0))
    any_store.add_telemetry("pi-1", rows(range(1, 6)), 10.0)
    assert any_store.prune_telemetry(11.0) == 5  # pi-1's mark is now seq 5
    inserted = any_store.add_telemetry_many(
        [
            ("pi-2", rows(range(1, 11)), 20.0),
            ("pi-1", rows(range(3, 9)), 20.0),  # 3..5 were stored and pruned: skipped
            ("pi-2", rows(range(6, 11)), 21.0),  # a retransmission in the same group
        ]
    )
    assert inserted == 10 + 3
    stored = list(any_store.telemetry_windows("digits", [1], None, 0.0))
    assert (
        sorted((w.device_id, w.received_at) for w in stored if w.device_id == "pi-1")
        == [("pi-1", 20.0)] * 3
    )
    assert sum(1 for w in stored if w.device_id == "pi-2") == 10
    any_store.touch_devices([("pi-2", 21.0), ("pi-1", 20.0), ("pi-2", 19.0)])
    pi2 = any_store.get_device("pi-2")
    assert pi2 is not None and pi2.last_seen == 21.0  # never moved backwards
    assert any_store.add_telemetry_many([]) == 0
