"""Every MQTT topic edgefleet uses, built and parsed in one place.

Layout (``root`` defaults to ``edgefleet/v1``)::

    {root}/dev/{device_id}/{kind}     kind in TopicKind (status, state, desired, ...)
    {root}/alerts                     hub -> anyone: fleet alerts

Invariants:

- A device id is 1-64 characters of ``[A-Za-z0-9._-]`` starting with a letter or digit, so it
  can never contain ``/``, ``+``, ``#`` or ``$`` and cannot escape its topic subtree or a
  Mosquitto ``%c``/``%u`` ACL pattern. Builders refuse anything else with UsageError.
- :meth:`Topics.parse` is the inverse of the device-topic builders and raises ProtocolError
  for anything it did not build.
- Shared subscriptions (``$share/edgefleet-hub/...``) are used only for the work topics
  (fetch, telemetry, resync), which one hub process must handle once. Status and state are
  retained snapshots every hub process needs: MQTT 5 (§4.8.2) forbids sending retained
  messages to shared subscriptions and brokers differ (Mosquitto 2.0.11 sends them to one
  member of the group, EMQX to none), so they stay plain subscriptions. Handling them is
  idempotent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

from edgefleet.core.errors import ProtocolError, UsageError

DEFAULT_ROOT = "edgefleet/v1"
SHARE_GROUP = "edgefleet-hub"
MAX_DEVICE_ID_LENGTH = 64
MAX_ROOT_LENGTH = 128

_DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_ROOT_LEVEL = re.compile(r"^[A-Za-z0-9._-]+$")


class TopicKind(StrEnum):
    """The per-device topics; the value is the last topic level."""

    STATUS = "status"  # device -> hub, retained, LWT "offline"
    STATE = "state"  # device -> hub, retained
    DESIRED = "desired"  # hub -> device, retained signed directive
    FETCH = "fetch"  # device -> hub, chunk request
    CHUNK = "chunk"  # hub -> device, binary chunk frame
    TELEMETRY = "telemetry"  # device -> hub, telemetry batch
    ACK = "ack"  # hub -> device, highest contiguous seq stored
    # device -> hub: "send me my current directive". A device with fresh state asks on
    # connect instead of trusting only the retained message, which a broker restored
    # from an older snapshot may hold in an old version.
    RESYNC = "resync"


#: Topics a device publishes (the hub subscribes to these) and the ones it subscribes to.
DEVICE_PUBLISHES: tuple[TopicKind, ...] = (
    TopicKind.STATUS,
    TopicKind.STATE,
    TopicKind.FETCH,
    TopicKind.TELEMETRY,
    TopicKind.RESYNC,
)
DEVICE_SUBSCRIBES: tuple[TopicKind, ...] = (TopicKind.DESIRED, TopicKind.CHUNK, TopicKind.ACK)
_SHAREABLE: frozenset[TopicKind] = frozenset(
    {TopicKind.FETCH, TopicKind.TELEMETRY, TopicKind.RESYNC}
)


def _kind(kind: TopicKind | str) -> TopicKind:
    try:
        return TopicKind(kind)
    except ValueError as e:
        raise UsageError(f"unknown topic kind {kind!r}") from e


def device_id_problem(device_id: object) -> str | None:
    """Why ``device_id`` is not a valid device id, or None when it is."""
    if not isinstance(device_id, str):
        return "must be a string"
    if device_id == "":
        return "must not be empty"
    if len(device_id) > MAX_DEVICE_ID_LENGTH:
        return f"longer than {MAX_DEVICE_ID_LENGTH} characters"
    for bad in ("/", "+", "#", "$"):
        if bad in device_id:
            return f"must not contain {bad!r}"
    if not _DEVICE_ID.fullmatch(device_id):
        return "may hold only letters, digits, '.', '_', '-' and must start with a letter or digit"
    return None


def validate_device_id(device_id: str) -> str:
    """Return ``device_id`` or raise UsageError saying what is wrong with it."""
    problem = device_id_problem(device_id)
    if problem is not None:
        raise UsageError(f"invalid device id {device_id!r}: {problem}")
    return device_id


class ParsedTopic(NamedTuple):
    device_id: str
    kind: TopicKind


@dataclass(frozen=True)
class Topics:
    """Topic builder and parser for one topic root."""

    root: str = DEFAULT_ROOT

    def __post_init__(self) -> None:
        if not isinstance(self.root, str) or not self.root:
            raise UsageError("topic root must be a non-empty string")
        if len(self.root) > MAX_ROOT_LENGTH:
            raise UsageError(f"topic root longer than {MAX_ROOT_LENGTH} characters")
        for level in self.root.split("/"):
            if not _ROOT_LEVEL.fullmatch(level):
                raise UsageError(
                    f"invalid topic root {self.root!r}: levels must be non-empty and hold only "
                    "letters, digits, '.', '_', '-'"
                )

    def device(self, device_id: str, kind: TopicKind | str) -> str:
        return f"{self.root}/dev/{validate_device_id(device_id)}/{_kind(kind).value}"

    def status(self, device_id: str) -> str:
        return self.device(device_id, TopicKind.STATUS)

    def state(self, device_id: str) -> str:
        return self.device(device_id, TopicKind.STATE)

    def desired(self, device_id: str) -> str:
        return self.device(device_id, TopicKind.DESIRED)

    def fetch(self, device_id: str) -> str:
        return self.device(device_id, TopicKind.FETCH)

    def resync(self, device_id: str) -> str:
        return self.device(device_id, TopicKind.RESYNC)

    def chunk(self, device_id: str) -> str:
        return self.device(device_id, TopicKind.CHUNK)

    def telemetry(self, device_id: str) -> str:
        return self.device(device_id, TopicKind.TELEMETRY)

    def ack(self, device_id: str) -> str:
        return self.device(device_id, TopicKind.ACK)

    def alerts(self) -> str:
        return f"{self.root}/alerts"

    def all_devices(self, kind: TopicKind | str) -> str:
        """The filter matching ``kind`` for every device (``{root}/dev/+/{kind}``)."""
        return f"{self.root}/dev/+/{_kind(kind).value}"

    def hub_subscriptions(self, shared: bool) -> list[str]:
        """Filters a hub subscribes to: every device-published kind for every device.

        With ``shared`` the work topics (fetch, telemetry) go through
        ``$share/edgefleet-hub/`` so several hub processes split them; status and state stay
        plain subscriptions (see the module docstring).
        """
        filters = []
        for kind in DEVICE_PUBLISHES:
            topic_filter = self.all_devices(kind)
            if shared and kind in _SHAREABLE:
                topic_filter = f"$share/{SHARE_GROUP}/{topic_filter}"
            filters.append(topic_filter)
        return filters

    def device_subscriptions(self, device_id: str) -> list[str]:
        """Topics a device subscribes to (its own desired, chunk and ack)."""
        return [self.device(device_id, kind) for kind in DEVICE_SUBSCRIBES]

    def parse(self, topic: str, *, side: str = "peer") -> ParsedTopic:
        """``(device_id, kind)`` of a device topic; ProtocolError(side) for anything else."""
        prefix = f"{self.root}/dev/"
        if not isinstance(topic, str) or not topic.startswith(prefix):
            raise ProtocolError(f"topic {str(topic)[:200]!r} is not under {prefix!r}", side=side)
        rest = topic[len(prefix) :].split("/")
        if len(rest) != 2:
            raise ProtocolError(f"topic {topic[:200]!r} is not {prefix}<device>/<kind>", side=side)
        device_id, kind_text = rest
        problem = device_id_problem(device_id)
        if problem is not None:
            raise ProtocolError(f"topic {topic[:200]!r}: device id {problem}", side=side)
        try:
            kind = TopicKind(kind_text)
        except ValueError as e:
            raise ProtocolError(
                f"topic {topic[:200]!r}: unknown kind {kind_text!r}", side=side
            ) from e
        return ParsedTopic(device_id, kind)
