"""A hub service over a real mosquitto with the generated password file and ACL.

``make_service_hub`` enrolls three devices, writes the broker config from the store and
starts mosquitto with it; :class:`Hub` then starts (and restarts) the service in-process
and connects device clients with their own credentials.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tests.hub.hubkit import HubFixture, make_hub
from tests.support.brokers import ProbeClient
from tests.support.bundles import placeholder_bundle

from edgefleet.core.directive import check_directive
from edgefleet.core.keys import load_private_key
from edgefleet.core.mqtt.client import MqttClient
from edgefleet.core.protocol import Topics
from edgefleet.core.testing.brokers import MosquittoBroker
from edgefleet.core.trust import TrustStore
from edgefleet.hub.broker_config import write_broker_config
from edgefleet.hub.bundles import PublishedBundleStore
from edgefleet.hub.commands.serve_cmd import mqtt_settings
from edgefleet.hub.config import HubConfig
from edgefleet.hub.enrollment import build_trust_store, enroll_device, publisher_trust
from edgefleet.hub.service import HubService
from edgefleet.hub.store import HubStore, open_store

T = Topics()
HUB_PASSWORD = "hub-secret-for-tests"
DEVICES = ("pi-a", "pi-b", "pi-c")
WAIT_S = 20.0


@dataclass
class Hub:
    fx: HubFixture
    config: HubConfig
    store: HubStore
    passwords: dict[str, str]
    trust: TrustStore
    port: int
    broker: MosquittoBroker
    service: HubService | None = None
    clients: list[ProbeClient] = field(default_factory=list)

    def start(self) -> HubService:
        client = MqttClient(mqtt_settings(self.config, HUB_PASSWORD))
        self.service = HubService(
            self.config, self.store, client, load_private_key(self.fx.hub_key)
        )
        self.service.start()
        assert self.service.wait_ready(WAIT_S)
        return self.service

    def restart(self) -> HubService:
        """A new hub process: new store connection, new service, new MQTT session."""
        assert self.service is not None
        self.service.stop()
        self.store.close()
        self.store = open_store(self.config.store.location)
        return self.start()

    def device(self, device_id: str, **kw: object) -> ProbeClient:
        client = ProbeClient(self.port, device_id, self.passwords[device_id], **kw)  # type: ignore[arg-type]
        assert client.connect() == 0
        for topic in T.device_subscriptions(device_id):
            client.subscribe(topic)
        self.clients.append(client)
        return client

    def observer(self) -> ProbeClient:
        """A client with the hub's own account (it may read every topic)."""
        client = ProbeClient(self.port, "edgefleet-hub", HUB_PASSWORD, client_id="observer")
        assert client.connect() == 0
        self.clients.append(client)
        return client

    def publish_bundle(self, version: int, size: int = 4096) -> str:
        info = placeholder_bundle(
            self.fx.root / f"v{version}.efb",
            self.fx.publisher_key,
            version=version,
            payload_bytes=size,
        )
        PublishedBundleStore(self.config.store.bundles_dir, self.store).publish(
            info.path, publisher_trust(self.config), time.time()
        )
        return info.sha256

    def close(self) -> None:
        for c in self.clients:
            c.close()
        if self.service is not None:
            self.service.stop()
        self.store.close()


def make_service_hub(
    tmp_path: Path,
    mosquitto_factory: Callable[..., MosquittoBroker],
    extra: str = "",
    *,
    store_url: str | None = None,
) -> Hub:
    """Config (``extra`` appended to hub.toml), three enrolled devices, their broker.

    ``store_url`` puts the hub store on PostgreSQL (``[store] url`` in hub.toml).
    """
    fx = make_hub(
        tmp_path,
        broker={"password": HUB_PASSWORD},
        extra="[service]\ntick_s = 3600\nmax_payload_bytes = 16384\n" + extra,
    )
    if store_url is not None:
        text = fx.config_path.read_text().replace("[store]\n", f'[store]\nurl = "{store_url}"\n', 1)
        fx.config_path.write_text(text)
    config = fx.config()
    store = open_store(config.store.location)
    passwords = {d: enroll_device(store, config, d, "rpi4-arm64", 1.0).password for d in DEVICES}
    files = write_broker_config(
        tmp_path / "broker", config, store.list_devices(), persistence=False
    )
    broker = mosquitto_factory(
        password_file=files.password_file, acl_file=files.acl_file, allow_anonymous=False
    )
    config = replace(config, broker=replace(config.broker, port=broker.port))
    return Hub(fx, config, store, passwords, build_trust_store(config), broker.port, broker)


def directive_from(client: ProbeClient, device_id: str, trust: TrustStore) -> dict:  # type: ignore[type-arg]
    [*_, (topic, payload)] = client.wait_for(lambda t, p: t == T.desired(device_id))
    envelope = json.loads(payload)
    check_directive(envelope, trust, device_id, None, time.time())
    return envelope["directive"]  # type: ignore[no-any-return]


def serve(config_path: Path, log_path: Path | None = None) -> subprocess.Popen[bytes]:
    """A real ``hub serve --config`` process; its output piped, or to ``log_path`` (a hub
    that logs much must not block on a pipe nobody reads)."""
    argv = [sys.executable, "-m", "edgefleet.core.cli.main", "hub", "serve"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if log_path is None:
        return subprocess.Popen(
            [*argv, "--config", str(config_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
    with log_path.open("ab") as out:
        return subprocess.Popen(
            [*argv, "--config", str(config_path)], stdout=out, stderr=subprocess.STDOUT, env=env
        )


def scrape(port: int, path: str = "/metrics") -> str | None:
    """The ``/metrics`` text of a hub, or None while it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return str(response.read().decode())
    except OSError:
        return None


class FleetCommitHold:
    """Holds the fleet ingest worker's next commit back until :meth:`release` (the fleet
    tables share the hub store's file: a database lock would stop the hub store too)."""

    def __init__(self, service: HubService) -> None:
        self._gate = threading.Event()
        telemetry = service.fleet.telemetry
        commit = telemetry.ingest_many

        def held(items: Any, now: float) -> Any:
            self._gate.wait(60)
            return commit(items, now)

        telemetry.ingest_many = held  # type: ignore[method-assign]

    def release(self) -> None:
        self._gate.set()
