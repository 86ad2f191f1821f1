"""MQTT client wrapper used by the agent and the hub (paho-mqtt 2.x underneath).

Errors: TransportError (core errors) for broker/network problems and a full outgoing queue
with ``queue_full="raise"``; ConfigError for invalid settings; UsageError for an invalid
topic or filter. ``MqttClient`` is imported lazily so that code needing only the settings or
the interface does not import paho.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgefleet.core.mqtt.backoff import BackoffPolicy
from edgefleet.core.mqtt.interface import (
    ConnectCallback,
    DisconnectCallback,
    Handler,
    InboundMessage,
    MqttStats,
    MqttTransport,
)
from edgefleet.core.mqtt.settings import MqttSettings, TlsSettings, Will

if TYPE_CHECKING:
    from edgefleet.core.mqtt.client import MqttClient

__all__ = [
    "BackoffPolicy",
    "ConnectCallback",
    "DisconnectCallback",
    "Handler",
    "InboundMessage",
    "MqttClient",
    "MqttSettings",
    "MqttStats",
    "MqttTransport",
    "TlsSettings",
    "Will",
]


def __getattr__(name: str) -> Any:
    if name == "MqttClient":
        from edgefleet.core.mqtt.client import MqttClient

        return MqttClient
    raise AttributeError(name)
