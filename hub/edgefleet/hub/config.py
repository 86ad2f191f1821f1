"""Hub configuration from ``hub.toml``.

::

    [store]
    path = "hub.db"                  # SQLite file (the default store); the fleet database
                                     # (fleet telemetry) sits next to it on either engine
    url = "postgresql://hub@db.example.org/edgefleet"   # optional: the store on PostgreSQL
    bundles_dir = "bundles"          # content-addressed bundle store

    [broker]
    host = "127.0.0.1"               # where the hub connects
    port = 1883
    username = "edgefleet-hub"       # the hub's own broker account
    password_file = "hub.password"   # or password = "..."
    client_id = "edgefleet-hub"
    tls_ca = "tls/ca.crt"            # optional; set to use TLS
    topic_root = "edgefleet/v1"
    shared_subscriptions = false     # $share/edgefleet-hub/... (Mosquitto 2, EMQX)
    device_host = "hub.example.org"  # what devices are told (default: host)
    device_port = 1883               # default: port
    config_dir = "broker"            # passwd + acl rewritten by hub device revoke/remove/reissue
    reload_command = "pkill -HUP -x mosquitto"   # run after they are rewritten

    [directives]
    expiry_s = 604800                # a directive is valid this long
    resign_before_s = 86400          # re-signed when it expires sooner than this

    [keys]
    hub_signing_key = "keys/hub.key"
    publisher_keys = ["keys/publisher.pub"]
    publisher_threshold = 1

    [service]
    tick_s = 1.0                     # rollout engine and directive re-signing period
    max_payload_bytes = 1048576      # larger device messages are dropped and counted

    [fleet]                          # telemetry ingest, drift monitoring, alerts, metrics
    monitor_interval_s = 60.0        # alert evaluation period
    webhook_url = "https://ops.example.org/hooks/edgefleet"   # optional alert webhook
    metrics_host = "127.0.0.1"       # Prometheus GET /metrics ...
    metrics_port = 9464              # ... 0 = off (the default)
    ingest_queue_size = 2000         # telemetry batches waiting to be stored
    device_messages_per_s = 2.0      # per-device telemetry quotas (docs/hub.md) ...
    device_bytes_per_s = 131072      # ... over quota: dropped unacked, resent later
    device_records_per_s = 200
    device_quota_burst_s = 30        # a device may burst this many seconds' worth
    hub_processes = 1                # hub serve processes sharing the devices' quotas
    raw_retention_s = 172800         # telemetry records (the one copy: gates, drift, alerts)
                                     # any FleetSettings field (fleet/settings.py)
    coarse_retention_s = "forever"   # a number of seconds, or "forever"
    k_fire = 2                       # any AlertPolicy field (fleet/alerts.py)
    scopes = ["fleet", "group"]

    [fleet.thresholds]               # DriftThresholds: alert monitor and hub drift
    psi_drift = 0.2

Invariants: every relative path is resolved against the directory holding
``hub.toml``, defaults included (``hub serve`` started from another folder opens the
same store); an unknown section or key is an error naming the file and the
key (a typo must not silently fall back to a default); every value is
type-checked in ``__post_init__``.
"""

from __future__ import annotations

import logging
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edgefleet.core.drift import DriftThresholds
from edgefleet.core.errors import DriftError
from edgefleet.hub.errors import HubConfigError
from edgefleet.hub.fleet.alerts import AlertPolicy
from edgefleet.hub.fleet.quotas import QuotaSettings
from edgefleet.hub.fleet.settings import FleetSettings
from edgefleet.hub.store.postgres import redact_url

DEFAULT_CONFIG_NAME = "hub.toml"
ENV_VAR = "EDGEFLEET_HUB_CONFIG"

log = logging.getLogger("edgefleet.hub")


@dataclass(frozen=True)
class StoreSettings:
    path: Path = Path("hub.db")
    # postgresql://user@host:port/database: the hub store on PostgreSQL instead of `path`
    # (a password may come from ~/.pgpass or $PGPASSWORD rather than the URL).
    url: str | None = None
    bundles_dir: Path = Path("bundles")

    @property
    def location(self) -> Path | str:
        """What ``open_store`` takes: the PostgreSQL URL if set, else the SQLite file."""
        return self.url if self.url is not None else self.path

    @property
    def is_sqlite(self) -> bool:
        return self.url is None

    def __post_init__(self) -> None:
        if self.url is not None:
            parts = urlsplit(self.url)
            if parts.scheme not in ("postgresql", "postgres") or not (parts.netloc or parts.path):
                raise ValueError(
                    f"url must be postgresql://[user@]host[:port]/database: {redact_url(self.url)}"
                )


@dataclass(frozen=True)
class BrokerSettings:
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = "edgefleet-hub"
    password: str | None = None
    password_file: Path | None = None
    client_id: str = "edgefleet-hub"
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    topic_root: str = "edgefleet/v1"
    shared_subscriptions: bool = False
    device_host: str | None = None
    device_port: int | None = None
    # Where `hub broker-config --out` wrote passwd and acl, and how to make the broker
    # re-read them: device revoke/remove/reissue rewrite both and run the command.
    config_dir: Path | None = None
    reload_command: str | None = None

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"port {self.port} out of range")
        if self.device_port is not None and not 0 < self.device_port < 65536:
            raise ValueError(f"device_port {self.device_port} out of range")
        if not self.topic_root or self.topic_root.startswith("/") or self.topic_root.endswith("/"):
            raise ValueError(
                f"topic_root {self.topic_root!r} must not be empty or start/end with /"
            )
        if any(c in self.topic_root for c in "+#"):
            raise ValueError("topic_root must not contain MQTT wildcards")
        if self.password is not None and self.password_file is not None:
            raise ValueError("set password or password_file, not both")

    def resolved_password(self) -> str | None:
        """The hub's broker password (inline or read from ``password_file``)."""
        if self.password is not None:
            return self.password
        if self.password_file is None:
            return None
        try:
            return self.password_file.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise HubConfigError(
                f"broker.password_file {self.password_file}: {e.strerror or e}"
            ) from e

    @property
    def public_host(self) -> str:
        return self.device_host or self.host

    @property
    def public_port(self) -> int:
        return self.device_port or self.port


@dataclass(frozen=True)
class DirectiveSettings:
    expiry_s: float = 7 * 86400.0
    resign_before_s: float = 86400.0

    def __post_init__(self) -> None:
        if self.expiry_s <= 0:
            raise ValueError("expiry_s must be positive")
        if not 0 <= self.resign_before_s < self.expiry_s:
            raise ValueError("resign_before_s must be in [0, expiry_s)")


@dataclass(frozen=True)
class KeySettings:
    hub_signing_key: Path | None = None
    publisher_keys: tuple[Path, ...] = ()
    publisher_threshold: int = 1

    def __post_init__(self) -> None:
        if self.publisher_threshold < 1:
            raise ValueError("publisher_threshold must be at least 1")
        if self.publisher_keys and self.publisher_threshold > len(self.publisher_keys):
            raise ValueError(
                f"publisher_threshold {self.publisher_threshold} exceeds the "
                f"{len(self.publisher_keys)} publisher key(s)"
            )


@dataclass(frozen=True)
class ServiceSettings:
    tick_s: float = 1.0
    max_payload_bytes: int = 1024 * 1024

    def __post_init__(self) -> None:
        if self.tick_s <= 0:
            raise ValueError("tick_s must be positive")
        if self.max_payload_bytes < 1024:
            raise ValueError("max_payload_bytes must be at least 1024")


@dataclass(frozen=True)
class FleetConfig:
    """``[fleet]``: the fleet settings, the alert policy and how the service runs them.

    In ``hub.toml`` the section is flat: a key names a field of :class:`FleetSettings`, of
    :class:`AlertPolicy` or of this class; ``[fleet.thresholds]`` holds the
    :class:`DriftThresholds` the alert policy scores with (``hub drift`` reads them too).
    """

    settings: FleetSettings = field(default_factory=FleetSettings)
    policy: AlertPolicy = field(default_factory=AlertPolicy)
    monitor_interval_s: float = 60.0
    webhook_url: str | None = None
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0  # 0 = no metrics endpoint
    ingest_queue_size: int = 2000
    # Per-device telemetry quotas (edgefleet.hub.fleet.quotas, which checks them); each of
    # ``hub_processes`` processes enforces its share.
    device_messages_per_s: float = 2.0
    device_bytes_per_s: float = 131072.0
    device_records_per_s: float = 200.0
    device_quota_burst_s: float = 30.0
    hub_processes: int = 1

    def __post_init__(self) -> None:
        if self.monitor_interval_s <= 0:
            raise ValueError("monitor_interval_s must be positive")
        if not 0 <= self.metrics_port < 65536:
            raise ValueError(f"metrics_port {self.metrics_port} out of range (0 = off)")
        if not self.metrics_host:
            raise ValueError("metrics_host must not be empty")
        if self.ingest_queue_size < 1:
            raise ValueError("ingest_queue_size must be at least 1")
        self.quota_settings()  # checks the quota fields
        if self.webhook_url is not None:
            parts = urlsplit(self.webhook_url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"webhook_url must be http(s)://host/...: {self.webhook_url!r}")

    def quota_settings(self) -> QuotaSettings:
        return QuotaSettings(
            self.device_messages_per_s,
            self.device_bytes_per_s,
            self.device_records_per_s,
            self.device_quota_burst_s,
            self.hub_processes,
        )


@dataclass(frozen=True)
class HubConfig:
    store: StoreSettings = field(default_factory=StoreSettings)
    broker: BrokerSettings = field(default_factory=BrokerSettings)
    directives: DirectiveSettings = field(default_factory=DirectiveSettings)
    keys: KeySettings = field(default_factory=KeySettings)
    service: ServiceSettings = field(default_factory=ServiceSettings)
    fleet: FleetConfig = field(default_factory=FleetConfig)
    source: Path | None = None

    @classmethod
    def load(cls, path: Path) -> HubConfig:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise HubConfigError(f"{path}: cannot read hub config: {e.strerror or e}") from e
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise HubConfigError(f"{path}: invalid TOML: {e}") from e
        return cls.from_mapping(document, base_dir=path.resolve().parent, source=path)

    @classmethod
    def from_mapping(
        cls, document: Mapping[str, Any], *, base_dir: Path, source: Path | None = None
    ) -> HubConfig:
        where = str(source) if source else "hub config"
        document = _retired_keys(document, where)
        sections: dict[str, Any] = {}
        for name, kind in _SECTIONS.items():
            raw = document.get(name, {})
            if not isinstance(raw, Mapping):
                raise HubConfigError(f"{where}: [{name}] must be a table")
            sections[name] = _build(kind, raw, base_dir, f"{where}: {name}")
        raw_fleet = document.get("fleet", {})
        if not isinstance(raw_fleet, Mapping):
            raise HubConfigError(f"{where}: [fleet] must be a table")
        sections["fleet"] = _build_fleet(raw_fleet, base_dir, f"{where}: fleet")
        unknown = set(document) - set(_SECTIONS) - {"fleet"}
        if unknown:
            raise HubConfigError(f"{where}: unknown section [{sorted(unknown)[0]}]")
        return cls(**sections, source=source)

    def to_toml(self) -> str:
        """Render as hub.toml (paths as stored; inline passwords are written out)."""
        lines: list[str] = []
        for name in _SECTIONS:
            section = getattr(self, name)
            lines.append(f"[{name}]")
            for f in fields(section):
                value = getattr(section, f.name)
                if value is None:
                    continue
                lines.append(f"{f.name} = {_toml_value(value)}")
            lines.append("")
        lines += _fleet_toml(self.fleet)
        return "\n".join(lines)


def _retired_keys(document: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    """``[store] telemetry_retention_s`` (hubs that kept a second copy of telemetry for the
    rollout gates) becomes ``[fleet] raw_retention_s``, the retention of the one copy, unless
    that is set too; either way a warning says so."""
    store = document.get("store")
    if not isinstance(store, Mapping) or RETIRED_RETENTION_KEY not in store:
        return document
    fleet = document.get("fleet", {})
    if not isinstance(fleet, Mapping):
        return document  # reported as it is by the section check
    value = store[RETIRED_RETENTION_KEY]
    out = dict(document)
    out["store"] = {k: v for k, v in store.items() if k != RETIRED_RETENTION_KEY}
    if "raw_retention_s" in fleet:
        log.warning(
            "%s: [store] %s is no longer used (telemetry is stored once);"
            " [fleet] raw_retention_s applies",
            where,
            RETIRED_RETENTION_KEY,
        )
    else:
        out["fleet"] = {**fleet, "raw_retention_s": value}
        log.warning(
            "%s: [store] %s is now [fleet] raw_retention_s (telemetry is stored once); using %s",
            where,
            RETIRED_RETENTION_KEY,
            value,
        )
    return out


# Kept by hubs that stored telemetry twice; read once as [fleet] raw_retention_s.
RETIRED_RETENTION_KEY = "telemetry_retention_s"

_SECTIONS: dict[str, type[Any]] = {
    "store": StoreSettings,
    "broker": BrokerSettings,
    "directives": DirectiveSettings,
    "keys": KeySettings,
    "service": ServiceSettings,
}


def _build(kind: type[Any], raw: Mapping[str, Any], base_dir: Path, where: str) -> Any:
    known = {f.name: f for f in fields(kind)}
    values: dict[str, Any] = {}
    for name, default in ((f.name, f.default) for f in known.values()):
        # A relative default path is relative to hub.toml too, not to the current folder.
        if name not in raw and isinstance(default, Path) and not default.is_absolute():
            values[name] = (base_dir / default).resolve()
    for key, value in raw.items():
        f = known.get(key)
        if f is None:
            raise HubConfigError(f"{where}.{key}: unknown key")
        values[key] = _convert(str(f.type), value, base_dir, f"{where}.{key}")
    try:
        return kind(**values)
    except (TypeError, ValueError, DriftError) as e:
        raise HubConfigError(f"{where}: {e}") from e


def _build_fleet(raw: Mapping[str, Any], base_dir: Path, where: str) -> FleetConfig:
    """``[fleet]``: each key goes to the one dataclass that has a field of that name."""
    targets: list[tuple[type[Any], dict[str, Any]]] = [
        (FleetSettings, {}),
        (AlertPolicy, {}),
        (FleetConfig, {}),
    ]
    thresholds: DriftThresholds | None = None
    for key, value in raw.items():
        if key == "thresholds":
            if not isinstance(value, Mapping):
                raise HubConfigError(f"{where}.thresholds: must be a table [fleet.thresholds]")
            thresholds = _build(DriftThresholds, value, base_dir, f"{where}.thresholds")
            continue
        for kind, values in targets:
            f = {f.name: f for f in fields(kind)}.get(key)
            if f is None or key in _FLEET_NESTED:
                continue
            if key == "coarse_retention_s" and isinstance(value, str):
                if value != "forever":
                    raise HubConfigError(f'{where}.{key}: expected seconds or "forever"')
                values[key] = None
            else:
                values[key] = _convert(str(f.type), value, base_dir, f"{where}.{key}")
            break
        else:
            raise HubConfigError(f"{where}.{key}: unknown key")
    (_, settings), (_, policy), (_, own) = targets
    try:
        if thresholds is not None:
            policy["thresholds"] = thresholds
        return FleetConfig(settings=FleetSettings(**settings), policy=AlertPolicy(**policy), **own)
    except (TypeError, ValueError, DriftError) as e:
        raise HubConfigError(f"{where}: {e}") from e


# FleetConfig fields that are whole objects, never keys of [fleet].
_FLEET_NESTED = frozenset({"settings", "policy", "thresholds"})


def _fleet_toml(fleet: FleetConfig) -> list[str]:
    lines = ["[fleet]"]
    for section in (fleet.settings, fleet.policy, fleet):
        for f in fields(section):
            if f.name in _FLEET_NESTED:
                continue
            value = getattr(section, f.name)
            if value is None:
                if f.name == "coarse_retention_s":
                    lines.append('coarse_retention_s = "forever"')
                continue
            lines.append(f"{f.name} = {_toml_value(value)}")
    lines += ["", "[fleet.thresholds]"]
    for f in fields(fleet.policy.thresholds):
        lines.append(f"{f.name} = {_toml_value(getattr(fleet.policy.thresholds, f.name))}")
    lines.append("")
    return lines


def _convert(type_name: str, value: Any, base_dir: Path, where: str) -> Any:
    base = type_name.replace(" | None", "")
    if base == "Path":
        if not isinstance(value, str) or not value:
            raise HubConfigError(f"{where}: expected a path string")
        return (base_dir / value).resolve() if not Path(value).is_absolute() else Path(value)
    if base == "tuple[Path, ...]":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise HubConfigError(f"{where}: expected a list of path strings")
        return tuple(_convert("Path", v, base_dir, where) for v in value)
    if base == "tuple[str, ...]":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise HubConfigError(f"{where}: expected a list of strings")
        return tuple(value)
    if base == "bool":
        if not isinstance(value, bool):
            raise HubConfigError(f"{where}: expected true or false")
        return value
    if base == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise HubConfigError(f"{where}: expected an integer")
        return value
    if base == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise HubConfigError(f"{where}: expected a number")
        if not math.isfinite(value):
            # TOML has nan and inf; NaN fails every comparison (tick_s = nan spun the
            # hub at full CPU) and inf makes a limit meaningless.
            raise HubConfigError(f"{where}: expected a finite number, not {value}")
        return float(value)
    if base == "str":
        if not isinstance(value, str):
            raise HubConfigError(f"{where}: expected a string")
        return value
    raise AssertionError(type_name)  # pragma: no cover


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Path):
        return _toml_string(str(value))
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return _toml_string(str(value))


def _toml_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def find_config(explicit: Path | None) -> Path:
    """``--config`` if given, else ``$EDGEFLEET_HUB_CONFIG``, else ``./hub.toml``."""
    if explicit is not None:
        return explicit
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    return Path(DEFAULT_CONFIG_NAME)


def load_config(explicit: Path | None) -> HubConfig:
    """Load the hub config; a missing default ``hub.toml`` is a usage error naming it."""
    path = find_config(explicit)
    if not path.exists():
        raise HubConfigError(f"{path}: hub config not found (pass --config or set ${ENV_VAR})")
    return HubConfig.load(path)
