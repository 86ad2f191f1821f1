"""Two hub services on one PostgreSQL store and one mosquitto (shared subscriptions, a
client id each): the once-per-fleet work of the tick is done by the lease holder only,
and the other takes over when the holder stops."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
from tests.hub.servicekit import DEVICES, HUB_PASSWORD, directive_from, make_service_hub

from edgefleet.core.keys import load_private_key
from edgefleet.core.mqtt.client import MqttClient
from edgefleet.core.testing.brokers import MosquittoBroker
from edgefleet.core.testing.postgres import PostgresServer
from edgefleet.hub.commands.serve_cmd import mqtt_settings
from edgefleet.hub.rollout.engine import RolloutEngine
from edgefleet.hub.service import HubService
from edgefleet.hub.singleton import LEASE
from edgefleet.hub.store import open_store

pytestmark = [pytest.mark.postgres, pytest.mark.mqtt]
GATES = ["min_devices=1", "min_inferences=10", "bake=0"]


def directive_counts(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT device, COUNT(*) FROM directives GROUP BY device").fetchall()
    return {device: n for device, n in rows}


def test_only_the_lease_holder_ticks_and_the_other_takes_over(
    tmp_path: Path,
    mosquitto_factory: Callable[..., MosquittoBroker],
    postgres_server: PostgresServer,
) -> None:
    url = postgres_server.dsn(postgres_server.create_database())
    hub = make_service_hub(tmp_path, mosquitto_factory, store_url=url)
    hub.config = replace(hub.config, broker=replace(hub.config.broker, shared_subscriptions=True))
    second_config = replace(hub.config, broker=replace(hub.config.broker, client_id="hub-2"))
    second_store = open_store(url)
    second = HubService(
        second_config,
        second_store,
        MqttClient(mqtt_settings(second_config, HUB_PASSWORD)),
        load_private_key(hub.fx.hub_key),
    )
    try:
        sha = hub.publish_bundle(1)
        first = hub.start()
        second.start()
        assert second.wait_ready(20)
        rollout = RolloutEngine(hub.store).create(
            "digits", 1, "all", time.time(), phases_text="100%", gate_overrides=GATES
        )
        for _ in range(3):  # both tick, in turns, as their tick threads would
            first.tick()
            second.tick()
        epochs = (first.singleton.epoch, second.singleton.epoch)
        assert sorted(e is None for e in epochs) == [False, True], epochs
        leader, follower = (first, second) if epochs[0] is not None else (second, first)

        events = [e.event for e in hub.store.rollout_events(rollout.rollout_id)]
        assert len(events) == len(set(events)), events  # every transition recorded once
        assert directive_counts(url) == {d: 1 for d in DEVICES}  # one directive each
        assert leader.counters.get("directives.published") == len(DEVICES)
        assert follower.counters.get("directives.published", 0) == 0
        device = hub.device("pi-a")
        assert directive_from(device, "pi-a", hub.trust)["assignments"][0]["bundle_sha256"] == sha

        old_epoch = leader.singleton.epoch
        leader.stop()  # releases the lease: the follower's next tick takes over
        if leader is first:
            hub.service = None
        follower.tick()
        assert follower.singleton.epoch == (old_epoch or 0) + 1
        holder = hub.store.lease_holder(LEASE)
        assert holder is not None and holder[0] == follower.singleton.holder
        assert directive_counts(url) == {d: 1 for d in DEVICES}  # nothing issued twice
    finally:
        if second.singleton.epoch is not None or second._threads:
            second.stop()
        second_store.close()
        hub.close()
