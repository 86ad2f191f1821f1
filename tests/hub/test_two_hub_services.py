"""Two hub services on one PostgreSQL store, driven by hand (no broker connection):

- presence and state: each message is stamped when it comes off the socket, and a report
  handled late by a slow hub never overwrites a newer one another hub stored (the last
  will carries no timestamp);
- the fleet alert monitor runs only in the hub holding the once-per-fleet work.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from tests.hub.servicekit import HUB_PASSWORD, make_service_hub

from edgefleet.core.keys import load_private_key
from edgefleet.core.mqtt.client import MqttClient
from edgefleet.core.mqtt.interface import InboundMessage
from edgefleet.core.protocol import Topics, encode_json
from edgefleet.core.protocol.messages import DeviceState, Status
from edgefleet.core.testing.brokers import MosquittoBroker
from edgefleet.core.testing.postgres import PostgresServer
from edgefleet.hub.commands.serve_cmd import mqtt_settings
from edgefleet.hub.service import HubService
from edgefleet.hub.store import open_store

pytestmark = [pytest.mark.postgres, pytest.mark.mqtt]
T = Topics()


class Clock:
    """A settable clock: each hub reads its own."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def drain(service: HubService) -> None:
    """What the hub's inbound worker does with its queue, run here at a chosen moment."""
    group = []
    while not service._inbound.empty():
        group.append(service._inbound.get_nowait())
    service._dispatch_group(group)


@pytest.fixture
def two_hubs(
    tmp_path: Path,
    mosquitto_factory: Callable[..., MosquittoBroker],
    postgres_server: PostgresServer,
) -> Iterator[tuple[HubService, HubService, Clock, Clock]]:
    url = postgres_server.dsn(postgres_server.create_database())
    hub = make_service_hub(tmp_path, mosquitto_factory, store_url=url)
    services, clocks = [], []
    for n in (1, 2):
        config = replace(
            hub.config,
            broker=replace(hub.config.broker, client_id=f"hub-{n}", shared_subscriptions=True),
            store=replace(hub.config.store, path=tmp_path / f"hub-{n}" / "hub.db"),
        )
        clock = Clock(100.0)
        services.append(
            HubService(
                config,
                open_store(url),
                MqttClient(mqtt_settings(config, HUB_PASSWORD)),
                load_private_key(hub.fx.hub_key),
                clock=clock,
            )
        )
        clocks.append(clock)
    yield services[0], services[1], clocks[0], clocks[1]
    for service in services:
        service.fleet.stop(5)
        service.store.close()
    hub.store.close()


def status(online: bool, at: float | None) -> InboundMessage:
    return InboundMessage(T.status("pi-a"), encode_json(Status(online, at)), retain=True)


def test_a_slow_hub_cannot_write_an_old_offline_over_a_newer_online(
    two_hubs: tuple[HubService, HubService, Clock, Clock],
) -> None:
    slow, fast, slow_clock, fast_clock = two_hubs
    slow.handle(status(False, None))  # the old connection's last will, received at 100
    fast_clock.now = 101.0
    fast.handle(status(True, 101.0))  # the device reconnected: "online", received at 101
    drain(fast)
    slow_clock.now = 130.0  # the slow hub gets to its queue half a minute later
    drain(slow)
    device = fast.store.get_device("pi-a")
    assert device is not None and device.online  # with handling-time stamps: offline
    assert slow.counters.get("presence.stale") == 1

    fast_clock.now = 140.0
    fast.handle(status(False, None))  # a newer last will does go through
    drain(fast)
    device = slow.store.get_device("pi-a")
    assert device is not None and not device.online


def test_an_older_state_report_handled_late_is_not_stored(
    two_hubs: tuple[HubService, HubService, Clock, Clock],
) -> None:
    slow, fast, slow_clock, fast_clock = two_hubs

    def state(seq: int) -> InboundMessage:
        report = DeviceState("pi-a", "1.0", "rpi4-arm64", 99.0 + seq, directive_seq=seq)
        return InboundMessage(T.state("pi-a"), encode_json(report), retain=True)

    slow.handle(state(1))  # received at 100
    fast_clock.now = 101.0
    fast.handle(state(2))
    drain(fast)
    slow_clock.now = 130.0
    drain(slow)
    device = fast.store.get_device("pi-a")
    assert device is not None and device.state.get("directive_seq") == 2
    assert slow.counters.get("state.stale") == 1


def test_only_the_lease_holder_runs_the_alert_monitor(
    two_hubs: tuple[HubService, HubService, Clock, Clock],
) -> None:
    first, second, _, _ = two_hubs
    first.tick()
    second.tick()
    leaders = [s for s in (first, second) if s.fleet.leader()]
    assert len(leaders) == 1  # before: every hub evaluated, alerts fired once per hub
    # Fleet maintenance too: the fleet tables are shared, one hub maintains them.
    assert [s for s in (first, second) if s.fleet.worker.maintains()] == leaders
    runs = {id(first): threading.Event(), id(second): threading.Event()}
    for service in (first, second):
        done = runs[id(service)]
        service.fleet.monitor.run_once = lambda now, done=done: done.set() or []  # type: ignore[method-assign]
        service.fleet.monitor.start(0.05, service.clock, service.fleet.leader)
    try:
        leader = leaders[0]
        follower = second if leader is first else first
        assert runs[id(leader)].wait(10)
        assert not runs[id(follower)].wait(0.5)  # many intervals: it would have run by now
        leader.singleton.release()  # the follower's next claim takes the work over
        follower.tick()
        assert follower.fleet.leader() and not leader.fleet.leader()
        assert follower.fleet.worker.maintains() and not leader.fleet.worker.maintains()
        assert runs[id(follower)].wait(10)
    finally:
        for service in (first, second):
            service.fleet.monitor.stop(5)
