"""Broker restarts cannot resurrect old directives (real Mosquitto, real hub service).

A broker restored from an older persistence snapshot holds both the hub's session (so the
hub reconnects with ``session present``) and an old retained directive; a device with
fresh state would accept it. The hub republishes its latest directives on every connect,
and a device that asks on ``resync`` gets its current directive even while the broker
still holds a stale one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.hub.servicekit import T, directive_from, make_service_hub
from tests.support.waiting import wait_until

from edgefleet.core.canonical import canonical_json
from edgefleet.core.protocol import ResyncRequest, encode_json
from edgefleet.core.testing.brokers import MosquittoBroker
from edgefleet.hub.store import DesiredAssignment

pytestmark = pytest.mark.mqtt


def assign(hub, device: str, sha: str, version: int) -> None:  # type: ignore[no-untyped-def]
    size = hub.store.get_bundle(sha).size
    assignment = DesiredAssignment("digits", sha, version, size, f"r{version}")
    hub.store.set_assignment(device, "digits", assignment, time.time())


def published_seq(hub, device: str) -> tuple[int, float | None]:  # type: ignore[no-untyped-def]
    record = hub.store.latest_directive(device)
    return record.seq, record.published_at


def test_a_broker_restored_from_an_older_snapshot_serves_the_latest_directive(
    tmp_path: Path, mosquitto_factory: Callable[..., MosquittoBroker]
) -> None:
    hub = make_service_hub(tmp_path, lambda **kw: mosquitto_factory(persistence=True, **kw))
    try:
        sha1, sha2 = hub.publish_bundle(1), hub.publish_bundle(2)
        service = hub.start()
        assign(hub, "pi-b", sha1, 1)
        service.tick()
        assert published_seq(hub, "pi-b")[1] is not None
        hub.broker.stop()  # mosquitto saves its persistence on the way out
        database = hub.broker.workdir / "mosquitto.db"
        snapshot = database.read_bytes()  # retained directive v1 and the hub's session
        hub.broker.start()
        wait_until("hub reconnect", lambda: service.transport.stats.connects >= 2)
        assign(hub, "pi-b", sha2, 2)
        service.tick()
        seq2, at2 = published_seq(hub, "pi-b")
        assert at2 is not None
        hub.broker.stop()
        database.write_bytes(snapshot)  # the broker comes back from the older snapshot
        hub.broker.start()
        wait_until("hub reconnect", lambda: service.transport.stats.connects >= 3)
        wait_until("directives published again", lambda: published_seq(hub, "pi-b")[1] != at2)
        device = hub.device("pi-b")  # fresh state: takes whatever is retained
        directive = directive_from(device, "pi-b", hub.trust)
        assert (directive["seq"], directive["assignments"][0]["version"]) == (seq2, 2)
    finally:
        hub.close()


def test_a_device_that_asks_gets_its_current_directive_over_a_stale_retained_one(
    tmp_path: Path, mosquitto_factory: Callable[..., MosquittoBroker]
) -> None:
    hub = make_service_hub(tmp_path, mosquitto_factory)
    try:
        sha1, sha2 = hub.publish_bundle(1), hub.publish_bundle(2)
        service = hub.start()
        assign(hub, "pi-c", sha1, 1)
        service.tick()
        stale = hub.store.latest_directive("pi-c")
        assert stale is not None and stale.published_at is not None
        assign(hub, "pi-c", sha2, 2)
        service.tick()
        # What an older broker snapshot would hold: the old envelope, signed by the hub.
        hub.observer().publish(T.desired("pi-c"), canonical_json(dict(stale.envelope)), retain=True)
        device = hub.device("pi-c")
        assert directive_from(device, "pi-c", hub.trust)["seq"] == stale.seq
        device.publish(T.resync("pi-c"), encode_json(ResyncRequest()))
        messages = device.wait_for(
            lambda t, p: t == T.desired("pi-c") and json.loads(p)["directive"]["seq"] > stale.seq
        )
        current = json.loads(messages[-1][1])["directive"]
        assert current["assignments"][0]["version"] == 2
        wait_until("resync counted", lambda: service.counters.get("directives.resync") == 1)
        # A device asking again at once is not answered again (each answer is a publish).
        device.publish(T.resync("pi-c"), encode_json(ResyncRequest()))
        device.publish(T.resync("pi-c"), b"{not json")
        wait_until("malformed counted", lambda: service.counters.get("malformed.resync") == 1)
        assert service.counters.get("directives.resync") == 1
    finally:
        hub.close()
