"""Two ``hub serve`` processes on one PostgreSQL store, one mosquitto with shared
subscriptions, a real agent daemon: the bundle was published from a third folder (as on
another host), so whichever hub the broker hands each fetch to has to write it from the
store first. The agent installs it (it checks the sha256 and the signatures itself)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from tests.hub.servicekit import serve
from tests.integration.fleet import WAIT_S, Fleet
from tests.support.waiting import wait_until

from edgefleet.core.testing.brokers import MosquittoBroker
from edgefleet.core.testing.postgres import PostgresServer
from edgefleet.hub.bundles import PublishedBundleStore
from edgefleet.hub.rollout.engine import RolloutEngine
from edgefleet.hub.store import open_store

pytestmark = [pytest.mark.mqtt, pytest.mark.postgres, pytest.mark.subprocess, pytest.mark.slow]


@pytest.fixture
def fleet(
    tmp_path: Path,
    mosquitto_factory: Callable[..., MosquittoBroker],
    postgres_server: PostgresServer,
) -> Iterator[Fleet]:
    broker = mosquitto_factory()
    url = postgres_server.dsn(postgres_server.create_database())
    f = Fleet(tmp_path, broker.host, broker.port)
    # The fleet's hub store on PostgreSQL; `hub publish` writes into a folder no hub serves.
    f.store.close()
    f.config = replace(f.config, store=replace(f.config.store, url=url))
    f.store = open_store(url)  # type: ignore[assignment]
    f.bundles = PublishedBundleStore(tmp_path / "publisher-bundles", f.store)
    f.engine = RolloutEngine(f.store)
    yield f
    f.close()


def hub_toml(fleet: Fleet, name: str) -> Path:
    folder = fleet.root / name
    folder.mkdir()
    config = folder / "hub.toml"
    config.write_text(
        f'[store]\npath = "hub.db"\nurl = "{fleet.config.store.url}"\nbundles_dir = "bundles"\n'
        f'[broker]\nhost = "{fleet.config.broker.host}"\nport = {fleet.config.broker.port}\n'
        f'client_id = "{name}"\nshared_subscriptions = true\n'
        f'[keys]\nhub_signing_key = "{fleet.root / "keys" / "hub.key"}"\n'
        f'publisher_keys = ["{fleet.root / "keys" / "publisher.pub"}"]\n'
        "[service]\ntick_s = 0.2\n"
    )
    return config


def test_an_agent_installs_a_bundle_no_serving_hub_published(fleet: Fleet) -> None:
    [device] = fleet.enroll(1)
    configs = [hub_toml(fleet, name) for name in ("hub-1", "hub-2")]
    hubs: list[subprocess.Popen[bytes]] = []
    try:
        for config in configs:
            hubs.append(serve(config, config.parent / "serve.log"))
        for config in configs:
            wait_until(
                f"{config.parent.name} up",
                lambda c=config: b"hub: serving" in (c.parent / "serve.log").read_bytes(),
                timeout_s=60.0,
            )
        device.start()
        device.url()
        v1 = fleet.bundle(1, pad_bytes=300_000)  # several fetch windows, spread over the hubs
        fleet.rollout(1)
        wait_until("the agent to run v1", lambda: fleet.runs(device, v1), timeout_s=WAIT_S)
        data = v1.path.read_bytes()
        cached = [c.parent / "bundles" / v1.sha256[:2] / f"{v1.sha256}.efb" for c in configs]
        assert any(p.exists() for p in cached)
        assert all(p.read_bytes() == data for p in cached if p.exists())
        for config in configs:  # nothing half-written, in any folder
            leftovers = [p for p in (config.parent / "bundles").rglob(".*") if p.is_file()]
            assert leftovers == []
    finally:
        device.stop()
        for hub in hubs:
            hub.terminate()
        for hub in hubs:
            try:
                hub.wait(30)
            except subprocess.TimeoutExpired:
                hub.kill()
                hub.wait(10)
