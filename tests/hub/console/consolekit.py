"""A populated hub for console tests: devices in groups, two published versions, a running
rollout, a device refusing its directive, fleet telemetry with drift on one device, and the
API served by uvicorn on a free loopback port."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from tests.hub.fleet.fleetkit import MODEL, N_FEATURES, SimDevice, reference
from tests.hub.hubkit import HubFixture, make_hub
from tests.support.bundles import placeholder_bundle

from edgefleet.hub.bundles import PublishedBundleStore
from edgefleet.hub.config import HubConfig
from edgefleet.hub.console.access_store import AccessStore, console_db_path
from edgefleet.hub.console.api.server import ApiThread
from edgefleet.hub.console.auth import create_token
from edgefleet.hub.credentials import mosquitto_hash
from edgefleet.hub.enrollment import publisher_trust
from edgefleet.hub.fleet.ingest import DeviceInfo, FleetTelemetry
from edgefleet.hub.fleet.settings import FleetSettings, fleet_location
from edgefleet.hub.rollout.engine import RolloutEngine
from edgefleet.hub.store import DeviceRecord, SqliteHubStore

GROUPS = ("north", "south")
PER_GROUP = 4
DRIFTING_DEVICE = "south-d02"
REFUSING_DEVICE = "north-d03"
REFUSAL = "directive rejected: unknown key 'frobnicate'"
ROLLOUT = "r-console"
PROFILE = "rpi4-arm64"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def device_ids() -> list[str]:
    return [f"{g}-d{i:02d}" for g in GROUPS for i in range(PER_GROUP)]


def state_report(
    version: int, *, error: str | None = None, seq: int | None = None
) -> dict[str, Any]:
    return {
        "models": [
            {
                "name": MODEL,
                "active": {"version": version, "bundle_sha256": None},
                "deployment": None,
            }
        ],
        "directive_seq": seq,
        "directive_error": error,
    }


@dataclass
class ConsoleHub:
    fx: HubFixture
    config: HubConfig
    store: SqliteHubStore
    tokens: dict[str, str]

    def token(self, role: str) -> str:
        return self.tokens[role]


def populate(root: Path, *, broker: dict[str, Any] | None = None) -> ConsoleHub:
    """The hub of the module docstring, without any server running."""
    fx = make_hub(root, broker=broker)
    config = fx.config()
    store = SqliteHubStore(config.store.path)
    now = time.time()
    for device_id in device_ids():
        store.add_device(
            DeviceRecord(
                device_id=device_id,
                profile=PROFILE,
                password_hash=mosquitto_hash("pw-" + device_id, iterations=1),
                created_at=now - 3600,
                group=device_id.split("-")[0],
            )
        )
        store.set_presence(device_id, True, now - 5)
        store.set_device_state(
            device_id,
            state_report(1, error=REFUSAL if device_id == REFUSING_DEVICE else None),
            now - 5,
        )
    bundles = PublishedBundleStore(config.store.bundles_dir, store)
    for version in (1, 2):
        info = placeholder_bundle(
            root / f"{MODEL}-v{version}.efb", fx.publisher_key, model=MODEL, version=version
        )
        bundles.publish(info.path, publisher_trust(config), now - 600)
    engine = RolloutEngine(store)
    engine.create(MODEL, 2, "group=south", now - 120, phases_text="1,100%", rollout_id=ROLLOUT)
    engine.tick(now - 60)  # created -> running, phase 1 assigned
    _telemetry(config, now)
    tokens = {}
    access = AccessStore(console_db_path(config.store.path))
    try:
        for role in ("viewer", "operator", "admin"):
            tokens[role] = create_token(access, f"{role}-token", role, now, 1.0).secret
    finally:
        access.close()
    return ConsoleHub(fx, config, store, tokens)


def _telemetry(config: HubConfig, now: float) -> None:
    """An hour of windows from every device; only DRIFTING_DEVICE's inputs are shifted."""
    rng = np.random.default_rng(7)
    profile = reference(rng)
    settings = FleetSettings()
    telemetry = FleetTelemetry(fleet_location(config.store.path), settings)
    try:
        telemetry.store.put_reference(MODEL, 1, profile.to_json(), {"accuracy": 0.95}, now)
        start = now - 3600
        for device_id in device_ids():
            dev = SimDevice(DeviceInfo(device_id, device_id.split("-")[0], PROFILE))
            for k in range(6):
                X = rng.normal(size=(200, N_FEATURES))
                if device_id == DRIFTING_DEVICE:
                    X[:, :5] += 2.0
                dev.record(profile, X, start + k * 600, start + (k + 1) * 600)
            telemetry.ingest(dev.info, dev.unacked, now - 30)
    finally:
        telemetry.close()


@contextmanager
def serve_api(hub: ConsoleHub) -> Iterator[str]:
    """The API on a free loopback port; yields its base URL."""
    port = free_port()
    api = ApiThread(hub.config, hub.store, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        api.stop()


def client(base: str, token: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=base, headers=headers, timeout=30.0)
