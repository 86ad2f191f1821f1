"""Bytes on the wire <-> protocol messages.

JSON control messages are compact UTF-8 JSON with sorted keys (:func:`encode_json`);
chunks use the binary frame of :mod:`edgefleet.core.protocol.chunks`. Each ``decode_*``
function enforces the size limit of its topic before parsing and raises only
:class:`~edgefleet.core.errors.ProtocolError`, whose ``side`` is the party that sends that
message (device for status/state/fetch/telemetry, hub for desired/chunk/ack).

An empty payload on a retained topic is how MQTT clears the retained message; the decoders
refuse it (ProtocolError) and callers that subscribe to retained topics check
``payload == b""`` first when clearing is meaningful to them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from edgefleet.core.errors import ProtocolError
from edgefleet.core.protocol.chunks import ChunkFrame
from edgefleet.core.protocol.fields import FieldReader, dump_json, load_json_object
from edgefleet.core.protocol.limits import (
    MAX_ACK_BYTES,
    MAX_DESIRED_BYTES,
    MAX_FETCH_BYTES,
    MAX_STATE_BYTES,
    MAX_STATUS_BYTES,
    MAX_TELEMETRY_BYTES,
)
from edgefleet.core.protocol.messages import (
    DEVICE,
    HUB,
    Ack,
    DeviceState,
    FetchRequest,
    ResyncRequest,
    Status,
)
from edgefleet.core.protocol.telemetry import TelemetryBatch
from edgefleet.core.protocol.topics import TopicKind


class JsonMessage(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


def encode_json(message: JsonMessage) -> bytes:
    """The wire bytes of a JSON control message."""
    return dump_json(message.to_dict())


def decode_status(payload: bytes) -> Status:
    data = load_json_object(payload, what="status", side=DEVICE, max_bytes=MAX_STATUS_BYTES)
    return Status.from_dict(data, side=DEVICE)


def decode_state(payload: bytes) -> DeviceState:
    data = load_json_object(payload, what="state", side=DEVICE, max_bytes=MAX_STATE_BYTES)
    return DeviceState.from_dict(data, side=DEVICE)


def decode_fetch(payload: bytes) -> FetchRequest:
    data = load_json_object(payload, what="fetch", side=DEVICE, max_bytes=MAX_FETCH_BYTES)
    return FetchRequest.from_dict(data, side=DEVICE)


def decode_telemetry(payload: bytes) -> TelemetryBatch:
    data = load_json_object(payload, what="telemetry", side=DEVICE, max_bytes=MAX_TELEMETRY_BYTES)
    return TelemetryBatch.from_dict(data, side=DEVICE)


def decode_resync(payload: bytes) -> ResyncRequest:
    data = load_json_object(payload, what="resync", side=DEVICE, max_bytes=MAX_ACK_BYTES)
    return ResyncRequest.from_dict(data, side=DEVICE)


def decode_ack(payload: bytes) -> Ack:
    data = load_json_object(payload, what="ack", side=HUB, max_bytes=MAX_ACK_BYTES)
    return Ack.from_dict(data, side=HUB)


def decode_desired(payload: bytes) -> dict[str, Any]:
    """The signed directive envelope ``{"directive": {...}, "signatures": [...]}``.

    Only the shape is checked here; signatures, device id, seq and expiry are checked by
    ``edgefleet.core.directive.check_directive``.
    """
    data = load_json_object(payload, what="desired", side=HUB, max_bytes=MAX_DESIRED_BYTES)
    r = FieldReader(data, what="desired", side=HUB)
    r.obj("directive")
    r.items("signatures", max_items=64)
    return data


def encode_chunk(frame: ChunkFrame) -> bytes:
    return frame.encode()


def decode_chunk(payload: bytes) -> ChunkFrame:
    return ChunkFrame.decode(payload, side=HUB)


#: The decoder for each per-device topic kind (what a subscriber of that kind receives).
DECODERS: Mapping[TopicKind, Callable[[bytes], object]] = {
    TopicKind.STATUS: decode_status,
    TopicKind.STATE: decode_state,
    TopicKind.DESIRED: decode_desired,
    TopicKind.FETCH: decode_fetch,
    TopicKind.CHUNK: decode_chunk,
    TopicKind.TELEMETRY: decode_telemetry,
    TopicKind.ACK: decode_ack,
    TopicKind.RESYNC: decode_resync,
}


def decode(kind: TopicKind | str, payload: bytes) -> object:
    """Decode ``payload`` received on a topic of ``kind``."""
    try:
        decoder = DECODERS[TopicKind(kind)]
    except (ValueError, KeyError) as e:
        raise ProtocolError(f"no message is defined for topic kind {kind!r}") from e
    return decoder(payload)
