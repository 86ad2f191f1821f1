"""A small fleet on one machine: the real hub service, real agent daemons, a real broker.

- The hub runs in the test process (``HubService`` with the real MQTT client, SQLite
  store, bundle store, rollout engine and directive issuer), so tests read its store
  and counters directly.
- Each device is enrolled through the hub's enrollment (``agent.toml`` and
  ``trust.json`` as ``hub device add`` writes them, plus test settings: a one-thread
  profile, one-second telemetry windows, smoke-only probation so that the hub's gates,
  not the device, judge live traffic) and runs as its own
  ``edgefleet agent run`` subprocess.
- :class:`Traffic` keeps sending inference requests to every running device, so
  rollout gates get evidence from the new version.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tests.support.agents import (
    PROFILE_NAME,
    agent_run_command,
    infer,
    profile_toml,
    wait_endpoint,
    wait_stopped,
)
from tests.support.bundles import write_signed_bundle
from tests.support.waiting import wait_until

from edgefleet.core.bundle_writer import BundleInfo
from edgefleet.core.keys import generate_keypair, load_private_key
from edgefleet.core.mqtt.client import MqttClient
from edgefleet.hub.bundles import PublishedBundleStore
from edgefleet.hub.commands.serve_cmd import mqtt_settings
from edgefleet.hub.config import HubConfig
from edgefleet.hub.enrollment import enroll_device, publisher_trust
from edgefleet.hub.rollout.engine import RolloutEngine
from edgefleet.hub.service import HubService
from edgefleet.hub.store import HubStore, SqliteHubStore

REPO = Path(__file__).resolve().parents[2]
PROFILE = PROFILE_NAME
PROFILE_TOML = profile_toml(
    description="test gateway: one thread, small budgets",
    max_bundle_bytes=8388608,
    telemetry_budget_bytes=4194304,
    window_s=1,
)
# Loose gates except the error rate: these tests are about distribution, and latency
# on a shared CI machine is noise. Phases pass once every moved device committed and
# reported 20 inferences of the new version, after one second of bake time.
GATES = (
    "min_inferences=20",
    "bake_s=1",
    "max_latency_p95_ratio=1000",
    "max_prediction_psi=1000",
    "device_timeout_s=180",
)
WAIT_S = 90.0


@dataclass
class Device:
    id: str
    root: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def config(self) -> Path:
        return self.root / "agent.toml"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def log(self) -> Path:
        return self.root / "agent.log"

    def start(self, extra_env: Mapping[str, str] | None = None) -> None:
        env = {**os.environ, **self.env, **(extra_env or {})}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                agent_run_command(self.config),
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=env,
            )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def url(self, timeout_s: float = 60.0) -> str:
        assert self.proc is not None
        return wait_endpoint(self.id, self.state_dir, self.proc, timeout_s, self.log_tail)

    def stop(self) -> None:
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def wait_paused(self, timeout_s: float = WAIT_S) -> None:
        """Wait for the SIGSTOP of the test pause hook."""
        assert self.proc is not None
        wait_stopped(self.proc, timeout_s, self.log_tail)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def log_tail(self) -> str:
        try:
            return self.log.read_text()[-4000:]
        except OSError:
            return ""


def enroll_agent(
    store: HubStore,
    config: HubConfig,
    device_id: str,
    root: Path,
    profiles: Path,
    *,
    window_s: float = 1,
    flush_interval_s: float = 0.2,
    env: Mapping[str, str] | None = None,
) -> Device:
    """Enroll ``device_id`` as ``hub device add`` does and write its ``agent.toml`` under
    ``root`` with the test settings (the profiles folder, smoke-only probation so that the
    hub's gates judge live traffic, short telemetry windows)."""
    enroll_device(
        store,
        config,
        device_id,
        PROFILE,
        time.time(),
        state_dir=str(root / "state"),
        endpoint_port=0,
        profiles_dir=profiles,
        out_dir=root,
    )
    toml = (root / "agent.toml").read_text()
    toml = toml.replace(
        'trust_store = "trust.json"',
        f'trust_store = "trust.json"\nprofiles_dir = "{profiles}"\nshutdown_timeout_s = 5',
    )
    toml += (
        "\n[probation]\nsmoke = true\nmin_requests = 0\nmax_seconds = 0\n"
        "max_error_rate = 1.0\n"
        f"\n[telemetry]\nwindow_s = {window_s}\nflush_interval_s = {flush_interval_s}\n"
    )
    (root / "agent.toml").write_text(toml)
    return Device(device_id, root, env=dict(env or {}))


class Fleet:
    """Hub + devices under ``root``, talking through the broker at ``host:port``."""

    def __init__(
        self,
        root: Path,
        host: str,
        port: int,
        *,
        chunk_size: int = 16 * 1024,
        window_bytes: int = 64 * 1024,
    ) -> None:
        self.root = root
        self.chunk_size = chunk_size
        self.window_bytes = window_bytes
        keys = root / "keys"
        generate_keypair("publisher", keys)
        generate_keypair("hub", keys)
        self.publisher_key: Ed25519PrivateKey = load_private_key(keys / "publisher.key")
        self.hub_key: Ed25519PrivateKey = load_private_key(keys / "hub.key")
        self.profiles = root / "profiles"
        self.profiles.mkdir()
        (self.profiles / f"{PROFILE}.toml").write_text(PROFILE_TOML)
        self.config = HubConfig.from_mapping(
            {
                "store": {"path": "hub.db", "bundles_dir": "hub-bundles"},
                "broker": {"host": host, "port": port, "client_id": "edgefleet-hub"},
                "keys": {
                    "hub_signing_key": "keys/hub.key",
                    "publisher_keys": ["keys/publisher.pub"],
                },
                "service": {"tick_s": 0.2},
            },
            base_dir=root,
        )
        self.store = SqliteHubStore(self.config.store.path)
        self.bundles = PublishedBundleStore(self.config.store.bundles_dir, self.store)
        self.engine = RolloutEngine(self.store)
        self.service: HubService | None = None
        self.devices: list[Device] = []

    # --- hub -------------------------------------------------------------------------
    def start_hub(self) -> HubService:
        client = MqttClient(mqtt_settings(self.config, None))
        self.service = HubService(self.config, self.store, client, self.hub_key)
        self.service.start()
        assert self.service.wait_ready(30), "hub did not subscribe"
        return self.service

    def hub_issue(self, device_id: str) -> None:
        """Make the hub sign a fresh directive for ``device_id`` now (published on its next tick)."""
        assert self.service is not None
        self.service.issuer.issue(device_id, time.time())

    def counter(self, name: str) -> int:
        assert self.service is not None
        return self.service.counters.get(name, 0)

    def close(self) -> None:
        for device in self.devices:
            device.stop()
        if self.service is not None:
            self.service.stop()
        self.store.close()

    # --- devices -----------------------------------------------------------------------
    def enroll(self, count: int, prefix: str = "pi") -> list[Device]:
        env = {
            "EDGEFLEET_SYNC_CHUNK_SIZE": str(self.chunk_size),
            "EDGEFLEET_SYNC_WINDOW_BYTES": str(self.window_bytes),
        }
        made = []
        for _ in range(count):
            device_id = f"{prefix}-{len(self.devices) + 1:02d}"
            root = self.root / "devices" / device_id
            device = enroll_agent(self.store, self.config, device_id, root, self.profiles, env=env)
            self.devices.append(device)
            made.append(device)
        return made

    def device_state(self, device: Device) -> dict[str, Any]:
        record = self.store.get_device(device.id)
        return {} if record is None else dict(record.state)

    def active(self, device: Device, model: str = "iris") -> dict[str, Any] | None:
        for entry in self.device_state(device).get("models", []):
            if entry.get("name") == model:
                return entry.get("active")
        return None

    def runs(self, device: Device, bundle: BundleInfo) -> bool:
        active = self.active(device)
        return active is not None and active.get("bundle_sha256") == bundle.sha256

    def events(self, device: Device) -> list[dict[str, Any]]:
        """Telemetry events the hub stored for ``device``, in seq order."""
        with contextlib.closing(sqlite3.connect(self.config.store.path, timeout=10)) as db:
            rows = db.execute(
                "SELECT summary FROM fleet_records WHERE device = ? AND kind = 'event'"
                " ORDER BY seq",
                (device.id,),
            ).fetchall()
        return [json.loads(row[0]) for row in rows]

    # --- bundles and rollouts ------------------------------------------------------------
    def bundle(
        self, version: int, *, kind: str = "iris", pad_bytes: int = 0, publish: bool = True
    ) -> BundleInfo:
        out = self.root / "bundles-out" / f"iris-{version}-{kind}.efb"
        out.parent.mkdir(parents=True, exist_ok=True)
        extra = {"card.md": os.urandom(pad_bytes)} if pad_bytes else None
        info = write_signed_bundle(
            out, kind, self.publisher_key, name="iris", version=version, extra_members=extra
        )
        if publish:
            self.bundles.publish(out, publisher_trust(self.config), time.time())
        return info

    def rollout(
        self, version: int, phases: str = "100%", gates: Sequence[str] = GATES, to: str = "all"
    ) -> str:
        record = self.engine.create(
            "iris", version, to, time.time(), phases_text=phases, gate_overrides=list(gates)
        )
        return record.rollout_id

    def rollout_state(self, rollout_id: str) -> str:
        return self.engine.get(rollout_id).status.state.value

    def wait_rollout(self, rollout_id: str, *states: str, timeout_s: float = WAIT_S) -> str:
        def reached() -> str | None:
            state = self.rollout_state(rollout_id)
            return state if state in states else None

        try:
            return str(wait_until(f"rollout {rollout_id} to reach {states}", reached, timeout_s))
        except AssertionError as e:
            status = self.engine.status(rollout_id, time.time())
            raise AssertionError(f"{e}: {json.dumps(status, default=str)[:3000]}") from None


class Traffic:
    """Inference requests to every running device, until stopped."""

    def __init__(self, devices: Sequence[Device], interval_s: float = 0.05) -> None:
        self.devices = devices
        self.interval_s = interval_s
        self.urls: dict[str, str] = {}
        self.codes: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            for device in self.devices:
                if not device.running:
                    continue
                try:
                    info = json.loads((device.state_dir / "endpoint.json").read_text())
                    code, _ = infer(str(info["url"]))
                except (OSError, ValueError, KeyError):
                    continue
                self.codes[code] = self.codes.get(code, 0) + 1
            self._stop.wait(self.interval_s)
