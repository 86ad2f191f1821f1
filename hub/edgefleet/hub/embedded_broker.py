"""``hub serve --embedded-broker``: amqtt in-process, for a single machine.

The embedded broker enforces the same rules as the generated Mosquitto
configuration (:mod:`edgefleet.hub.broker_config`): only enrolled devices and
the hub account log in (PBKDF2-SHA512 hashes from the hub store, checked by
:class:`HubPasswordAuthPlugin`), and :class:`HubTopicPlugin` confines each
device (username = device id) to publishing its own status/state/fetch/
telemetry and subscribing to / receiving its own desired/chunk/ack.

Invariants: the broker runs on its own asyncio loop in a daemon thread
(:class:`~edgefleet.core.mqtt.amqtt_runner.AmqttRunner`); ``start`` returns
once the port accepts connections or raises ``TransportError`` (amqtt
missing, port in use, broker refused to start); amqtt has no shared
subscriptions, so the hub must run with ``shared_subscriptions = false``
against it; devices enrolled after the
broker started are picked up on the next login (the user table is a live
callable, not a copy).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from edgefleet.core.mqtt.amqtt_runner import AmqttRunner
from edgefleet.core.protocol.topics import DEVICE_PUBLISHES, DEVICE_SUBSCRIBES, Topics
from edgefleet.hub.credentials import verify_password

log = logging.getLogger("edgefleet.hub.broker")

UserTable = Callable[[], Mapping[str, str]]  # username -> "$7$..." hash

# amqtt builds plugins from dotted paths, so the live tables are registered here
# under a key handed to the plugins through their config.
_REGISTRY: dict[str, tuple[UserTable, str, str]] = {}

try:  # amqtt is the hub extra's embedded broker; the rest of the hub works without it
    from amqtt.contexts import Action
    from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
except ImportError:  # pragma: no cover - exercised only without the extra
    BaseAuthPlugin = BaseTopicPlugin = object  # type: ignore[misc,assignment]
    Action = None  # type: ignore[assignment,misc]


def device_may(topics: Topics, username: str, topic: str, action: str) -> bool:
    """The device ACL as a pure function (``action``: publish, subscribe or receive)."""
    if action == "publish":
        kinds = DEVICE_PUBLISHES
    elif action in ("subscribe", "receive"):
        kinds = DEVICE_SUBSCRIBES
    else:
        return False
    try:
        return any(topic == topics.device(username, kind) for kind in kinds)
    except Exception:  # a username that is not a device id: nothing allowed
        return False


class HubPasswordAuthPlugin(BaseAuthPlugin):  # type: ignore[misc,valid-type]
    """Logs in the hub account and enrolled devices; anonymous clients are refused."""

    @dataclass
    class Config:
        registry_key: str = ""

    async def authenticate(self, *, session: Any) -> bool | None:
        users, _root, _hub = _REGISTRY[self.context.config.registry_key]
        username = getattr(session, "username", None)
        password = getattr(session, "password", None)
        if not username or password is None:
            return False
        hashed = users().get(username)
        if hashed is None:
            return False
        if isinstance(password, bytes):
            password = password.decode("utf-8", "replace")
        return verify_password(str(password), hashed)


class HubTopicPlugin(BaseTopicPlugin):  # type: ignore[misc,valid-type]
    """The hub account may use the whole topic root; a device only its own topics."""

    @dataclass
    class Config:
        registry_key: str = ""
        extra: dict[str, Any] = field(default_factory=dict)

    async def topic_filtering(
        self, *, session: Any = None, topic: str | None = None, action: Any = None
    ) -> bool | None:
        _users, root, hub_username = _REGISTRY[self.context.config.registry_key]
        username = getattr(session, "username", None)
        if not topic or not username:
            return False
        topics = Topics(root)
        if username == hub_username:
            return topic.startswith(f"{root}/")
        return device_may(topics, username, topic, str(getattr(action, "value", action)))


class EmbeddedBroker:
    """amqtt on ``host:port`` with the hub's users and ACL, in a background thread."""

    def __init__(
        self, host: str, port: int, users: UserTable, *, topic_root: str, hub_username: str
    ) -> None:
        self.host, self.port = host, port
        self._key = f"{id(self)}-{time.monotonic_ns()}"
        _REGISTRY[self._key] = (users, topic_root, hub_username)
        self._runner = AmqttRunner(self._config(), thread_name="hub-embedded-broker")

    def _config(self) -> dict[str, Any]:
        module = __name__
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {
                f"{module}.HubPasswordAuthPlugin": {"registry_key": self._key},
                f"{module}.HubTopicPlugin": {"registry_key": self._key},
            },
        }

    def start(self) -> EmbeddedBroker:
        self._runner.start()
        log.info("embedded amqtt broker listening on %s:%s", self.host, self.port)
        return self

    def stop(self) -> None:
        self._runner.stop()
        _REGISTRY.pop(self._key, None)
