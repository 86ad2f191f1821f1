"""Connection settings of the MQTT client wrapper, validated on construction.

Defaults follow docs/protocol.md: MQTT 3.1.1, QoS 1, a persistent session
(``clean_session=False``) so the broker queues QoS 1 messages for a device while it is
offline. A hub that shares subscriptions may turn the persistent session off.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from edgefleet.core.errors import ConfigError
from edgefleet.core.mqtt.backoff import BackoffPolicy

QueueFullPolicy = Literal["drop_oldest", "raise"]
ProtocolVersion = Literal["3.1.1", "5"]


@dataclass(frozen=True)
class TlsSettings:
    ca_file: Path
    cert_file: Path | None = None  # client certificate (mutual TLS), optional
    key_file: Path | None = None
    check_hostname: bool = True

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigError("mqtt tls: cert_file and key_file go together")


@dataclass(frozen=True)
class Will:
    """Last will: published by the broker when the client vanishes without DISCONNECT."""

    topic: str
    payload: bytes
    retain: bool = True
    qos: int = 1

    def __post_init__(self) -> None:
        if not self.topic or "+" in self.topic or "#" in self.topic:
            raise ConfigError(f"mqtt will: invalid topic {self.topic!r}")
        if self.qos not in (0, 1):
            raise ConfigError("mqtt will: qos must be 0 or 1")


@dataclass(frozen=True)
class MqttSettings:
    host: str
    client_id: str
    port: int = 1883
    username: str | None = None
    password: str | None = None
    tls: TlsSettings | None = None
    keepalive_s: int = 30
    lwt: Will | None = None
    clean_session: bool = False
    protocol: ProtocolVersion = "3.1.1"
    #: MQTT 5 only: how long the broker keeps a persistent session after we disconnect.
    session_expiry_s: int = 7 * 24 * 3600
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    connect_timeout_s: float = 10.0
    #: Messages waiting to be handed to the broker (while offline or beyond max_inflight).
    max_queued: int = 1000
    queue_full: QueueFullPolicy = "drop_oldest"
    #: QoS 1 messages sent but not yet acknowledged by the broker.
    max_inflight: int = 20

    def __post_init__(self) -> None:
        if not self.host:
            raise ConfigError("mqtt: host must not be empty")
        if not 0 < self.port < 65536:
            raise ConfigError(f"mqtt: port {self.port} out of range")
        if not self.client_id or len(self.client_id.encode("utf-8")) > 65535:
            raise ConfigError("mqtt: client_id must be 1..65535 bytes")
        if self.password is not None and self.username is None:
            raise ConfigError("mqtt: a password needs a username")
        if not 5 <= self.keepalive_s <= 65535:
            raise ConfigError("mqtt: keepalive_s must be within 5..65535")
        if self.protocol not in ("3.1.1", "5"):
            raise ConfigError(f"mqtt: protocol must be '3.1.1' or '5', not {self.protocol!r}")
        if self.connect_timeout_s <= 0:
            raise ConfigError("mqtt: connect_timeout_s must be positive")
        if self.max_queued < 1 or self.max_inflight < 1:
            raise ConfigError("mqtt: max_queued and max_inflight must be >= 1")
        if self.queue_full not in ("drop_oldest", "raise"):
            raise ConfigError("mqtt: queue_full must be 'drop_oldest' or 'raise'")
        if self.session_expiry_s < 0:
            raise ConfigError("mqtt: session_expiry_s must be >= 0")
