"""The agent's configuration: ``agent.toml`` read with :mod:`tomllib`.

Invariants a loaded :class:`AgentConfig` guarantees:

- every field has the documented type and range (``bool`` is never an integer);
  every error names the file and the field (``agent.toml: field 'probation.max_error_rate'
  must be between 0 and 1``);
- unknown sections and keys are refused, so a misspelt limit never silently
  falls back to its default;
- relative paths are resolved against the directory of the config file, so
  the same file works from any working directory (systemd starts in ``/``);
- an endpoint bound to anything but a loopback address has a bearer token.

Nothing here touches the state directory or the network: the config is a
value, passed explicitly to whoever needs it.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgefleet.agent.errors import AgentConfigError
from edgefleet.core.hosts import is_loopback_host

DEFAULT_CONFIG_PATH = Path("/etc/edgefleet/agent.toml")
DEFAULT_STATE_DIR = Path("/var/lib/edgefleet")

_DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_LOG_LEVELS = ("debug", "info", "warning", "error")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    """A finite int or float: TOML has nan and inf, and NaN passes no comparison."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class EndpointSettings:
    """``[endpoint]``: the local Open Inference Protocol v2 server."""

    host: str = "127.0.0.1"
    port: int = 8080
    token: str | None = None
    max_body_bytes: int = 4 * 1024 * 1024

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise AgentConfigError("field 'endpoint.host' must be a non-empty string")
        if not _is_int(self.port) or not 0 <= self.port <= 65535:
            raise AgentConfigError("field 'endpoint.port' must be an integer 0..65535 (0: any)")
        if self.token is not None and (not isinstance(self.token, str) or len(self.token) < 16):
            raise AgentConfigError("field 'endpoint.token' must be a string of 16+ characters")
        if not is_loopback_host(self.host) and self.token is None:
            raise AgentConfigError(
                f"field 'endpoint.token' is required when 'endpoint.host' ({self.host}) "
                "is not a loopback address"
            )
        if not _is_int(self.max_body_bytes) or self.max_body_bytes < 1024:
            raise AgentConfigError("field 'endpoint.max_body_bytes' must be an integer >= 1024")


@dataclass(frozen=True)
class ProbationSettings:
    """``[probation]``: when a newly activated version counts as good (RAUC's mark-good).

    A new version must pass its smoke set (when ``smoke``), then the first
    ``min_requests`` live requests or ``max_seconds`` seconds, whichever comes
    first, with an error rate at most ``max_error_rate`` and a p95 latency at
    most ``max_p95_latency_ms``. ``max_attempts`` bounds how often a deployment
    step is resumed after the agent died in it (mender's loop counter).
    """

    smoke: bool = True
    min_requests: int = 100
    max_seconds: float = 600.0
    max_error_rate: float = 0.05
    max_p95_latency_ms: float = 1000.0
    max_attempts: int = 3

    def __post_init__(self) -> None:
        if not isinstance(self.smoke, bool):
            raise AgentConfigError("field 'probation.smoke' must be true or false")
        if not _is_int(self.min_requests) or self.min_requests < 0:
            raise AgentConfigError("field 'probation.min_requests' must be an integer >= 0")
        if not _is_number(self.max_seconds) or self.max_seconds < 0:
            raise AgentConfigError("field 'probation.max_seconds' must be a number >= 0")
        if not _is_number(self.max_error_rate) or not 0 <= self.max_error_rate <= 1:
            raise AgentConfigError("field 'probation.max_error_rate' must be between 0 and 1")
        if not _is_number(self.max_p95_latency_ms) or self.max_p95_latency_ms <= 0:
            raise AgentConfigError("field 'probation.max_p95_latency_ms' must be a number > 0")
        if not _is_int(self.max_attempts) or self.max_attempts < 1:
            raise AgentConfigError("field 'probation.max_attempts' must be an integer >= 1")


@dataclass(frozen=True)
class TelemetrySettings:
    """``[telemetry]``: window length and buffer limits.

    ``window_s`` and ``budget_bytes`` default to the device profile's
    ``window_s`` and ``telemetry_budget_bytes`` (None here means "use the
    profile"). ``flush_interval_s`` bounds how much accounting a kill -9 can
    lose.
    """

    window_s: int | None = None
    budget_bytes: int | None = None
    flush_interval_s: float = 1.0
    prediction_ring: int = 10_000

    def __post_init__(self) -> None:
        if self.window_s is not None and (not _is_int(self.window_s) or self.window_s < 1):
            raise AgentConfigError("field 'telemetry.window_s' must be an integer >= 1")
        if self.budget_bytes is not None and (
            not _is_int(self.budget_bytes) or self.budget_bytes < 64 * 1024
        ):
            raise AgentConfigError("field 'telemetry.budget_bytes' must be an integer >= 65536")
        if not _is_number(self.flush_interval_s) or not 0.05 <= self.flush_interval_s <= 60:
            raise AgentConfigError("field 'telemetry.flush_interval_s' must be between 0.05 and 60")
        if not _is_int(self.prediction_ring) or not 0 <= self.prediction_ring <= 1_000_000:
            raise AgentConfigError(
                "field 'telemetry.prediction_ring' must be an integer 0..1000000"
            )


@dataclass(frozen=True)
class MqttSection:
    """``[mqtt]``: how the agent reaches the hub (used by the hub sync)."""

    host: str
    port: int = 1883
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    topic_root: str = "edgefleet/v1"
    keepalive_s: int = 30

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise AgentConfigError("field 'mqtt.host' must be a non-empty string")
        if not _is_int(self.port) or not 1 <= self.port <= 65535:
            raise AgentConfigError("field 'mqtt.port' must be an integer 1..65535")
        for name in ("username", "password"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise AgentConfigError(f"field 'mqtt.{name}' must be a string")
        if self.password is not None and self.username is None:
            raise AgentConfigError("field 'mqtt.password' needs 'mqtt.username'")
        if (self.cert_file is None) != (self.key_file is None):
            raise AgentConfigError("fields 'mqtt.cert_file' and 'mqtt.key_file' go together")
        if (
            not isinstance(self.topic_root, str)
            or not self.topic_root
            or any(c in self.topic_root for c in "#+")
            or self.topic_root.startswith("/")
            or self.topic_root.endswith("/")
        ):
            raise AgentConfigError(
                "field 'mqtt.topic_root' must be a topic prefix without wildcards "
                "or leading/trailing '/'"
            )
        if not _is_int(self.keepalive_s) or not 5 <= self.keepalive_s <= 3600:
            raise AgentConfigError("field 'mqtt.keepalive_s' must be an integer 5..3600")

    @property
    def tls(self) -> bool:
        return self.ca_file is not None


@dataclass(frozen=True)
class AgentConfig:
    """The whole ``agent.toml``. Times in seconds, sizes in bytes."""

    device_id: str
    state_dir: Path = DEFAULT_STATE_DIR
    profile: str = "generic-arm64"
    profiles_dir: Path | None = None
    trust_store: Path = Path("/etc/edgefleet/trust.json")
    log_level: str = "info"
    shutdown_timeout_s: float = 10.0
    endpoint: EndpointSettings = field(default_factory=EndpointSettings)
    probation: ProbationSettings = field(default_factory=ProbationSettings)
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)
    mqtt: MqttSection | None = None
    source: Path | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.device_id, str) or not _DEVICE_ID_RE.fullmatch(self.device_id):
            raise AgentConfigError(
                "field 'agent.device_id' must be 1-128 letters, digits, '.', '_' or '-'"
            )
        if not isinstance(self.profile, str) or not self.profile:
            raise AgentConfigError("field 'agent.profile' must be a profile name or path")
        if self.log_level not in _LOG_LEVELS:
            raise AgentConfigError(
                f"field 'agent.log_level' must be one of {', '.join(_LOG_LEVELS)}"
            )
        if not _is_number(self.shutdown_timeout_s) or not 0 < self.shutdown_timeout_s <= 300:
            raise AgentConfigError("field 'agent.shutdown_timeout_s' must be between 0 and 300")

    @classmethod
    def load(cls, path: Path) -> AgentConfig:
        """Read and validate ``path``; errors name the file and the field."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError as e:
            raise AgentConfigError(f"{path}: no such config file") from e
        except (OSError, UnicodeDecodeError) as e:
            raise AgentConfigError(f"{path}: cannot read config: {e}") from e
        return cls.parse(text, Path(path))

    @classmethod
    def parse(cls, text: str, path: Path) -> AgentConfig:
        """Build a config from TOML ``text``; ``path`` names it in errors and anchors relative paths."""
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise AgentConfigError(f"{path}: not valid TOML: {e}") from e
        try:
            return _from_document(document, Path(path))
        except AgentConfigError as e:
            raise AgentConfigError(f"{path}: {e}") from None


# section -> key -> converter applied before the dataclass validates the value.
_Converter = Callable[[Any, Path], Any]


def _path(value: Any, base: Path) -> Any:
    if not isinstance(value, str) or not value:
        return value  # the dataclass or the caller reports the type error
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p)


def _keep(value: Any, base: Path) -> Any:
    return value


def _optional_str(value: Any, base: Path) -> Any:
    return None if value == "" else value


_SECTIONS: Mapping[str, Mapping[str, _Converter]] = {
    "agent": {
        "device_id": _keep,
        "state_dir": _path,
        "profile": _keep,
        "profiles_dir": _path,
        "trust_store": _path,
        "log_level": _keep,
        "shutdown_timeout_s": _keep,
    },
    "endpoint": {"host": _keep, "port": _keep, "token": _optional_str, "max_body_bytes": _keep},
    "probation": {
        "smoke": _keep,
        "min_requests": _keep,
        "max_seconds": _keep,
        "max_error_rate": _keep,
        "max_p95_latency_ms": _keep,
        "max_attempts": _keep,
    },
    "telemetry": {
        "window_s": _keep,
        "budget_bytes": _keep,
        "flush_interval_s": _keep,
        "prediction_ring": _keep,
    },
    "mqtt": {
        "host": _keep,
        "port": _keep,
        "username": _optional_str,
        "password": _optional_str,
        "ca_file": _path,
        "cert_file": _path,
        "key_file": _path,
        "topic_root": _keep,
        "keepalive_s": _keep,
    },
}

_PATH_FIELDS = {"state_dir", "profiles_dir", "trust_store", "ca_file", "cert_file", "key_file"}


def _section(document: Mapping[str, Any], name: str, base: Path) -> dict[str, Any] | None:
    raw = document.get(name)
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise AgentConfigError(f"[{name}] must be a table")
    allowed = _SECTIONS[name]
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in allowed:
            raise AgentConfigError(f"field '{name}.{key}' is not known")
        converted = allowed[key](value, base)
        if key in _PATH_FIELDS and converted is not None and not isinstance(converted, Path):
            raise AgentConfigError(f"field '{name}.{key}' must be a non-empty path string")
        out[key] = converted
    return out


def _from_document(document: Mapping[str, Any], path: Path) -> AgentConfig:
    for key in document:
        if key not in _SECTIONS:
            raise AgentConfigError(f"section or field '{key}' is not known")
    base = path.resolve().parent
    agent = _section(document, "agent", base)
    if agent is None or "device_id" not in agent:
        raise AgentConfigError("field 'agent.device_id' is missing")
    parts: dict[str, Any] = dict(agent)
    endpoint = _section(document, "endpoint", base)
    if endpoint is not None:
        parts["endpoint"] = EndpointSettings(**endpoint)
    probation = _section(document, "probation", base)
    if probation is not None:
        if "max_seconds" in probation and _is_int(probation["max_seconds"]):
            probation["max_seconds"] = float(probation["max_seconds"])
        parts["probation"] = ProbationSettings(**probation)
    telemetry = _section(document, "telemetry", base)
    if telemetry is not None:
        parts["telemetry"] = TelemetrySettings(**telemetry)
    mqtt = _section(document, "mqtt", base)
    if mqtt is not None:
        if "host" not in mqtt:
            raise AgentConfigError("field 'mqtt.host' is missing")
        parts["mqtt"] = MqttSection(**mqtt)
    return AgentConfig(source=path, **parts)


def example_config(device_id: str = "pi-0001", state_dir: Path = DEFAULT_STATE_DIR) -> str:
    """A commented ``agent.toml`` with every field at its default (docs and tests)."""
    return f"""\
[agent]
device_id = "{device_id}"
state_dir = "{state_dir}"
profile = "generic-arm64"          # device profile name or path to a profile .toml
trust_store = "/etc/edgefleet/trust.json"
log_level = "info"
shutdown_timeout_s = 10

[endpoint]
host = "127.0.0.1"                 # any other address needs a token
port = 8080
# token = "a-long-random-secret"
max_body_bytes = 4194304

[probation]
smoke = true
min_requests = 100
max_seconds = 600
max_error_rate = 0.05
max_p95_latency_ms = 1000
max_attempts = 3

[telemetry]
# window_s and budget_bytes default to the device profile
flush_interval_s = 1.0
prediction_ring = 10000
"""
