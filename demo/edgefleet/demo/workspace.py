"""Where a demo run keeps its files, and the configuration it writes.

Layout of the work directory::

    keys/       publisher.key/.pub (signs bundles), hub.key/.pub (signs directives)
    registry/   the model registry
    models/     trained models and their data (joblib, npz)
    bundles/    packed .efb files, one per version and device profile
    hub/        hub.toml, hub.password, hub.db (hub store and fleet tables), bundles/
    devices/ID/ agent.toml, trust.json (from ``hub device add``), state/
    logs/       one log per process the demo started
    drift-report.html

Invariants: every path handed to a child process is absolute and inside the work
directory, so a process left behind can always be traced to its run; the fleet layout
(groups, profiles, which devices drift) is a pure function of the device count.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path

from edgefleet.core.errors import UsageError

# Two device classes that run on any x86_64 or arm64 machine with onnxruntime's CPU
# provider (the agent checks a bundle against its configured profile, not the host).
GROUPS: tuple[tuple[str, str, str], ...] = (
    ("clinic-north", "rpi4-arm64", "pi"),
    ("clinic-south", "x86_64-gateway", "gw"),
)
MIN_DEVICES = 3
MAX_DEVICES = 24


@dataclass(frozen=True)
class DemoDevice:
    device_id: str
    group: str
    profile: str
    drifts: bool  # the demo scales this device's size features in the drift step

    def to_dict(self) -> dict[str, object]:
        return {"group": self.group, "profile": self.profile, "drift_injected": self.drifts}


def plan_fleet(count: int) -> list[DemoDevice]:
    """``count`` devices alternating between the two groups; the 2nd and 3rd drift.

    Devices 2 and 3 are one of each group, so the drift step shows a per-device
    effect that a per-group view would blur.
    """
    if not MIN_DEVICES <= count <= MAX_DEVICES:
        raise UsageError(f"--devices must be between {MIN_DEVICES} and {MAX_DEVICES}")
    devices: list[DemoDevice] = []
    numbers = {g[0]: 0 for g in GROUPS}
    for i in range(count):
        group, profile, prefix = GROUPS[i % len(GROUPS)]
        numbers[group] += 1
        devices.append(DemoDevice(f"{prefix}-{numbers[group]}", group, profile, i in (1, 2)))
    return devices


@dataclass(frozen=True)
class Workspace:
    root: Path

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def publisher_key(self) -> Path:
        return self.keys / "publisher.key"

    @property
    def registry(self) -> Path:
        return self.root / "registry"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def bundles(self) -> Path:
        return self.root / "bundles"

    @property
    def hub_dir(self) -> Path:
        return self.root / "hub"

    @property
    def hub_config(self) -> Path:
        return self.hub_dir / "hub.toml"

    @property
    def hub_store(self) -> Path:
        return self.hub_dir / "hub.db"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def report(self) -> Path:
        return self.root / "drift-report.html"

    def device_dir(self, device_id: str) -> Path:
        return self.root / "devices" / device_id

    def agent_config(self, device_id: str) -> Path:
        return self.device_dir(device_id) / "agent.toml"

    def state_dir(self, device_id: str) -> Path:
        return self.device_dir(device_id) / "state"

    def endpoint_file(self, device_id: str) -> Path:
        # Written by the agent once its endpoint listens: {"pid", "url", "port"}.
        return self.state_dir(device_id) / "endpoint.json"

    def endpoint_port(self, device_id: str) -> int | None:
        try:
            doc = json.loads(self.endpoint_file(device_id).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        port = doc.get("port") if isinstance(doc, dict) else None
        return port if isinstance(port, int) and port > 0 else None


def prepare_root(root: Path) -> None:
    """The work directory must be new or empty: a demo never mixes with older files."""
    if root.exists():
        if not root.is_dir():
            raise UsageError(f"--workdir {root} is not a directory")
        if any(root.iterdir()):
            raise UsageError(f"--workdir {root} is not empty")
    root.mkdir(parents=True, exist_ok=True)


def hub_toml(broker_port: int, tick_s: float, monitor_interval_s: float = 2.0) -> str:
    """The demo hub's configuration (paths relative to hub.toml's directory)."""
    return f"""\
# Written by `edgefleet demo`: one hub with an embedded broker on loopback.
[store]
path = "hub.db"
bundles_dir = "bundles"

[broker]
host = "127.0.0.1"
port = {broker_port}
password_file = "hub.password"
shared_subscriptions = false

[keys]
hub_signing_key = "../keys/hub.key"
publisher_keys = ["../keys/publisher.pub"]

[service]
tick_s = {tick_s}

[fleet]
# Alerts are evaluated every few seconds (production: a minute) and per device too,
# so the drift injected on two devices shows up as alerts while the demo runs.
monitor_interval_s = {monitor_interval_s}
scopes = ["fleet", "group", "device"]
"""


def write_hub_files(ws: Workspace, broker_port: int, tick_s: float) -> None:
    ws.hub_dir.mkdir(parents=True, exist_ok=True)
    ws.hub_config.write_text(hub_toml(broker_port, tick_s), encoding="utf-8")
    password = ws.hub_dir / "hub.password"
    password.write_text(secrets.token_urlsafe(24) + "\n", encoding="utf-8")
    password.chmod(0o600)


@dataclass(frozen=True)
class AgentTuning:
    """What the demo changes in each enrolled device's agent.toml to fit in minutes."""

    window_s: int = 2
    flush_interval_s: float = 0.5
    probation_min_requests: int = 20
    probation_max_seconds: float = 20.0
    probation_max_error_rate: float = 0.05

    def toml(self) -> str:
        return f"""
# Added by `edgefleet demo`: short telemetry windows and probation, to fit in minutes.
[probation]
min_requests = {self.probation_min_requests}
max_seconds = {self.probation_max_seconds}
max_error_rate = {self.probation_max_error_rate}

[telemetry]
window_s = {self.window_s}
flush_interval_s = {self.flush_interval_s}
"""


def tune_agent_config(path: Path, tuning: AgentTuning) -> None:
    """Append the demo's [probation] and [telemetry] tables to an enrolled agent.toml."""
    text = path.read_text(encoding="utf-8")
    if "[probation]" in text or "[telemetry]" in text:
        raise UsageError(f"{path} already has [probation] or [telemetry]")
    path.write_text(text.rstrip("\n") + "\n" + tuning.toml(), encoding="utf-8")
