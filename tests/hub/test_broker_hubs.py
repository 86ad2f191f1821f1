"""``hub broker-config --hubs N``: one broker account, client id and hub.toml section per
hub process, enforced by the generated mosquitto.conf run as written."""

from __future__ import annotations

import getpass
import time
import tomllib
from pathlib import Path

import pytest
from tests.hub.hubkit import make_hub
from tests.hub.test_broker_acl import REFUSED, connect, run_generated_conf
from tests.support.brokers import ProbeClient

from edgefleet.core.protocol.topics import Topics
from edgefleet.core.testing.brokers import free_port
from edgefleet.hub.broker_config import write_broker_config
from edgefleet.hub.broker_files import BROKER_FILES
from edgefleet.hub.enrollment import enroll_device
from edgefleet.hub.errors import HubUsageError

T = Topics()


def test_each_hub_process_gets_its_own_account_and_section(tmp_path: Path) -> None:
    hub = make_hub(tmp_path)
    store, config = hub.store(), hub.config()
    enroll_device(store, config, "pi-a", "rpi5", 1.0)
    files = write_broker_config(
        tmp_path / "broker", config, store.list_devices(), port=free_port(), hubs=3
    )
    users = [a.username for a in files.hub_processes]
    assert users == [f"{config.broker.username}-{k}" for k in (1, 2, 3)]
    passwd = files.password_file.read_text().splitlines()
    assert sorted(line.split(":")[0] for line in passwd) == sorted(
        [config.broker.username, *users, "pi-a"]
    )
    acl = files.acl_file.read_text()
    for user in users:
        assert f"user {user}\ntopic readwrite {T.root}/#" in acl
    secrets = set()
    for k, account in enumerate(files.hub_processes, start=1):
        assert account.hub_toml_file.name == f"hub-{k}-broker.toml"
        section = tomllib.loads(account.hub_toml_file.read_text())["broker"]
        assert section["username"] == section["client_id"] == account.username
        assert section["shared_subscriptions"] is True
        assert Path(section["password_file"]) == account.password_file
        assert account.password_file.stat().st_mode & 0o777 == 0o600
        secrets.add(account.password_file.read_text())
    assert len(secrets) == 3  # no two processes share a password
    again = write_broker_config(
        tmp_path / "broker", config, store.list_devices(), port=files.port, hubs=3
    )
    assert {a.password_file.read_text() for a in again.hub_processes} == secrets  # kept
    assert {f.name for f in BROKER_FILES} >= {"hub-*.password", "hub-*-broker.toml"}
    store.close()


def test_a_device_named_like_a_hub_process_is_refused(tmp_path: Path) -> None:
    hub = make_hub(tmp_path)
    store, config = hub.store(), hub.config()
    enroll_device(store, config, f"{config.broker.username}-2", "rpi5", 1.0)
    with pytest.raises(HubUsageError, match="equals a hub's broker username"):
        write_broker_config(tmp_path / "broker", config, store.list_devices(), hubs=2)
    store.close()


@pytest.mark.subprocess
def test_two_hub_processes_stay_connected_side_by_side(tmp_path: Path) -> None:
    """Under ``use_username_as_clientid`` two processes on one account would take each
    other's session over; with an account each both stay and share the device topics."""
    hub = make_hub(tmp_path)
    store, config = hub.store(), hub.config()
    password = enroll_device(store, config, "pi-a", "rpi5", 1.0).password
    files = write_broker_config(
        tmp_path / "broker",
        config,
        store.list_devices(),
        port=free_port(),
        bind="127.0.0.1",
        run_as=getpass.getuser(),
        hubs=2,
    )
    store.close()
    clients: list[ProbeClient] = []
    try:
        with run_generated_conf(files):
            port = files.port
            hubs = []
            for account in files.hub_processes:
                secret = account.password_file.read_text().strip()
                assert ProbeClient(port, account.username, "wrong").connect() in REFUSED
                hubs.append(connect(clients, port, account.username, secret))
            for client in hubs:
                for topic in T.hub_subscriptions(shared=True):
                    assert client.subscribe(topic) == [1]
            device = connect(clients, port, "pi-a", password)
            for n in range(20):
                device.publish(T.telemetry("pi-a"), f"batch-{n}".encode())
            deadline = time.monotonic() + 20
            got: list[bytes] = []
            while len(got) < 20 and time.monotonic() < deadline:
                for c in hubs:
                    while not c.messages.empty():
                        got.append(c.messages.get_nowait()[1])
                time.sleep(0.05)
            assert sorted(got) == sorted(f"batch-{n}".encode() for n in range(20))
            assert all(c.client.is_connected() for c in hubs)  # nobody was kicked off
    finally:
        for c in clients:
            c.close()
