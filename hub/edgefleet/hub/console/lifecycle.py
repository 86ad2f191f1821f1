"""Device lifecycle after enrollment: re-issue credentials, revoke, remove.

Each change is written to the hub store first, then the broker's password file and ACL are
rewritten (with :mod:`edgefleet.hub.broker_config`'s renderers, into ``[broker] config_dir``,
the directory ``hub broker-config --out`` wrote) and the broker is told to reload through
``[broker] reload_command`` (for example ``pkill -HUP -x mosquitto`` or
``systemctl reload mosquitto``).

Invariants:

- a revoked device keeps its record (history, rollouts) but its password hash is replaced by
  :data:`~edgefleet.hub.console.devices.REVOKED_HASH`, which no password matches, and it is
  left out of the broker's password file — also by every later ``hub broker-config``;
- a device taking part in an active rollout can be revoked but not removed (the rollout's
  gates would wait for it forever); abort or finish the rollout first;
- re-issuing a revoked device's credentials re-admits it;
- when the reload command fails, the store and the files are already changed: the error
  (:class:`BrokerReloadError`, exit code 1) says so and names the command to run again.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from edgefleet.core.errors import OperationalError
from edgefleet.core.protocol.topics import Topics
from edgefleet.hub.broker_config import (
    _write_atomic,
    hub_credentials,
    render_acl,
    render_password_file,
)
from edgefleet.hub.config import HubConfig
from edgefleet.hub.console.devices import REVOKED_HASH, is_revoked
from edgefleet.hub.credentials import generate_password, mosquitto_hash
from edgefleet.hub.enrollment import build_trust_store, render_agent_toml
from edgefleet.hub.errors import HubError, HubNotFoundError, HubUsageError
from edgefleet.hub.rollout.machine import ACTIVE_STATES
from edgefleet.hub.store import DeviceRecord, HubStore

RELOAD_TIMEOUT_S = 30.0


class BrokerReloadError(HubError, OperationalError):
    """The broker files were rewritten but the reload command failed."""


def broker_devices(devices: Iterable[DeviceRecord]) -> list[DeviceRecord]:
    """The devices that belong in the broker's password file (not revoked)."""
    return [d for d in devices if not is_revoked(d)]


@dataclass(frozen=True)
class BrokerRefresh:
    rewritten: bool
    reloaded: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"rewritten": self.rewritten, "reloaded": self.reloaded, "detail": self.detail}


def refresh_broker(config: HubConfig, store: HubStore) -> BrokerRefresh:
    """Rewrite passwd and acl in ``broker.config_dir`` and run ``broker.reload_command``."""
    out_dir = config.broker.config_dir
    if out_dir is None:
        return BrokerRefresh(
            False, False, "broker.config_dir is not set: rerun `hub broker-config` and reload"
        )
    username, password, _written = hub_credentials(config, out_dir)
    entries = [(username, mosquitto_hash(password))]
    entries += [
        (d.device_id, d.password_hash)
        for d in sorted(broker_devices(store.list_devices()), key=lambda d: d.device_id)
    ]
    _write_atomic(out_dir / "passwd", render_password_file(entries), 0o600)
    _write_atomic(out_dir / "acl", render_acl(Topics(config.broker.topic_root), username), 0o644)
    command = config.broker.reload_command
    if not command:
        return BrokerRefresh(True, False, f"rewrote {out_dir}/passwd; no broker.reload_command")
    try:
        done = subprocess.run(
            shlex.split(command),
            capture_output=True,
            text=True,
            timeout=RELOAD_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BrokerReloadError(
            f"broker files rewritten, but reload command {command!r} failed: {e}"
        ) from e
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
        raise BrokerReloadError(
            f"broker files rewritten, but reload command {command!r} exited "
            f"{done.returncode}: {tail[0][:200]}"
        )
    return BrokerRefresh(True, True, f"rewrote {out_dir}/passwd and ran {command!r}")


def _device(store: HubStore, device_id: str) -> DeviceRecord:
    device = store.get_device(device_id)
    if device is None:
        raise HubNotFoundError(f"no such device {device_id}")
    return device


def reissue(
    store: HubStore, config: HubConfig, device_id: str, *, state_dir: str, endpoint_port: int
) -> dict[str, Any]:
    """New broker password for the device; returns its new agent.toml (shown once)."""
    device = _device(store, device_id)
    trust = build_trust_store(config)  # before any write: a config error changes nothing
    password = generate_password()
    store.replace_device_credentials(device_id, mosquitto_hash(password))
    agent_toml = render_agent_toml(
        device_id=device_id,
        profile=device.profile,
        config=config,
        password=password,
        state_dir=state_dir,
        endpoint_port=endpoint_port,
        with_ca=config.broker.tls_ca is not None,
    )
    broker = refresh_broker(config, store)
    return {
        "device": device_id,
        "action": "reissued",
        "was_revoked": is_revoked(device),
        "mqtt": {"username": device_id, "password": password},
        "agent_toml": agent_toml,
        "trust": trust.to_dict(),
        "broker": broker.to_dict(),
    }


def revoke(store: HubStore, config: HubConfig, device_id: str) -> dict[str, Any]:
    device = _device(store, device_id)
    if not is_revoked(device):
        store.replace_device_credentials(device_id, REVOKED_HASH)
    broker = refresh_broker(config, store)
    return {"device": device_id, "action": "revoked", "broker": broker.to_dict()}


def remove(store: HubStore, config: HubConfig, device_id: str) -> dict[str, Any]:
    _device(store, device_id)
    with store.transaction():
        busy = [
            r.rollout_id for r in store.list_rollouts(ACTIVE_STATES) if device_id in r.plan.devices
        ]
        if busy:
            raise HubUsageError(
                f"device {device_id} is in active rollout {busy[0]}; abort or finish it first"
            )
        store.remove_device(device_id)
    broker = refresh_broker(config, store)
    return {"device": device_id, "action": "removed", "broker": broker.to_dict()}
